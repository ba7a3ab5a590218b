//! The four JetStream streams of the log (docs/protocol.md §2) and their configuration, and the
//! handlers' marks bucket.
//!
//! [`configs`] says what each stream must look like; [`ensure`] creates the missing ones and
//! updates those whose configuration differs. Only the subject prefixes here and in
//! [`crate::subjects`] name the log.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, Republish, StorageType},
};

/// The stream an event type lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Rooms,
    Presence,
    Users,
    Accounts,
    /// The functions' registry (`chatlog functions add`): no event of [`crate::Payload`].
    Functions,
    /// Events a function could not take after its last try, by function.
    Dead,
}

impl Stream {
    pub const ALL: [Stream; 6] = [
        Stream::Rooms,
        Stream::Presence,
        Stream::Users,
        Stream::Accounts,
        Stream::Functions,
        Stream::Dead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Rooms => "CHAT_ROOMS",
            Stream::Presence => "CHAT_PRESENCE",
            Stream::Users => "CHAT_USERS",
            Stream::Accounts => "CHAT_ACCOUNTS",
            Stream::Functions => "CHAT_FUNCTIONS",
            Stream::Dead => "CHAT_DEAD",
        }
    }

    /// `chat.room`, `chat.presence`, ...: a stored subject is `<prefix>.<id>`.
    pub fn subject_prefix(self) -> &'static str {
        match self {
            Stream::Rooms => "chat.room",
            Stream::Presence => "chat.presence",
            Stream::Users => "chat.user",
            Stream::Accounts => "chat.account",
            Stream::Functions => "chat.function",
            Stream::Dead => "chat.dead",
        }
    }

    /// Where RePublish copies the stream's messages, if it does.
    pub fn live_prefix(self) -> Option<&'static str> {
        match self {
            Stream::Rooms => Some("live.room"),
            Stream::Presence => Some("live.presence"),
            Stream::Users => Some("live.user"),
            Stream::Accounts | Stream::Functions | Stream::Dead => None,
        }
    }

    /// The stream a stored subject belongs to, if any.
    pub fn of_subject(subject: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| {
            subject
                .strip_prefix(s.subject_prefix())
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// How long `CHAT_DEAD` keeps an event a function did not take.
pub const DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The knobs of the stream configurations; the defaults are the protocol's.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Largest stored event, in bytes. Matches the edge's frame limit: an event built from an
    /// accepted frame always fits.
    pub max_msg_size: i32,
    /// How long a `Nats-Msg-Id` is remembered: a retried append within it is stored once.
    pub duplicate_window: Duration,
    /// Presence is short-lived: heartbeats older than this are dropped.
    pub presence_max_age: Duration,
    /// 1 on a single server, 3 on a cluster of three or more.
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_msg_size: 64 * 1024,
            duplicate_window: Duration::from_secs(5 * 60),
            presence_max_age: Duration::from_secs(10 * 60),
            replicas: 1,
        }
    }
}

/// The configuration each stream must have.
pub fn configs(settings: &StreamSettings) -> Vec<Config> {
    Stream::ALL
        .into_iter()
        .map(|stream| config(stream, settings))
        .collect()
}

/// The configuration of one stream.
pub fn config(stream: Stream, settings: &StreamSettings) -> Config {
    let prefix = stream.subject_prefix();
    let mut config = Config {
        name: stream.name().to_string(),
        subjects: vec![format!("{prefix}.*")],
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        num_replicas: settings.replicas,
        max_message_size: settings.max_msg_size,
        duplicate_window: settings.duplicate_window,
        allow_direct: true,
        republish: stream.live_prefix().map(|live| Republish {
            source: format!("{prefix}.>"),
            destination: format!("{live}.>"),
            headers_only: false,
        }),
        ..Default::default()
    };
    match stream {
        Stream::Rooms => {
            config.description = Some("everything that happens in a room".into());
            config.deny_delete = true;
            config.deny_purge = true;
        }
        Stream::Presence => {
            config.description = Some("heartbeats, online/offline and typing".into());
            config.max_age = settings.presence_max_age;
        }
        Stream::Users => {
            config.description = Some("per-user events: read markers, notifications".into());
            config.deny_delete = true;
        }
        Stream::Accounts => {
            config.description = Some("account registrations".into());
            config.deny_delete = true;
        }
        Stream::Functions => {
            config.description = Some("the functions registry (chatlog functions)".into());
            config.deny_delete = true;
        }
        Stream::Dead => {
            config.description = Some("events a function did not take after its last try".into());
            config.max_age = DEAD_MAX_AGE;
            // An event as stored plus the headers saying why.
            config.max_message_size = settings.max_msg_size.saturating_add(8 * 1024);
        }
    }
    config
}

/// The KV bucket of the handlers' "at most once" marks: how far each view has emitted its derived
/// events (key: the view's name). Not part of the log: it lives in NATS, replicated like the
/// streams, so that a handler whose disk is lost rebuilds its view and notifies nobody twice.
pub const MARKS_BUCKET: &str = "CHATLOG_MARKS";

/// The marks bucket's configuration: the latest value per key, replicated like the streams.
pub fn marks_config(settings: &StreamSettings) -> jetstream::kv::Config {
    jetstream::kv::Config {
        bucket: MARKS_BUCKET.to_string(),
        description: "chatlog handlers: how far each view emitted its derived events".into(),
        history: 1,
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// The JetStream Object Store bucket of the files clients upload (docs/protocol.md §10), and the
/// stream that holds it. Not part of the log: a file's bytes are too large for an event, and a
/// message names its files by id. Replicated like the streams.
pub const FILES_BUCKET: &str = "CHAT_FILES";
pub const FILES_STREAM: &str = "OBJ_CHAT_FILES";

/// The files bucket's configuration: file storage, replicated like the streams.
pub fn files_config(settings: &StreamSettings) -> jetstream::object_store::Config {
    jetstream::object_store::Config {
        bucket: FILES_BUCKET.to_string(),
        description: Some("chatlog: the files uploaded to rooms (docs/protocol.md §10)".into()),
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// Whether `have` (as the server reports it) lacks something `want` asks for.
fn differs(want: &Config, have: &Config) -> bool {
    want.subjects != have.subjects
        || want.storage != have.storage
        || want.discard != have.discard
        || want.num_replicas != have.num_replicas.max(1)
        || want.max_message_size != have.max_message_size
        || want.duplicate_window != have.duplicate_window
        || want.max_age != have.max_age
        || want.deny_delete != have.deny_delete
        || want.deny_purge != have.deny_purge
        || want.allow_direct != have.allow_direct
        || want.republish != have.republish
        || want.description != have.description
}

/// What [`ensure`] did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Updated,
    Unchanged,
}

/// A stream could not be read, created or updated.
#[derive(Debug, thiserror::Error)]
#[error("{action} stream {stream}: {source}")]
pub struct EnsureError {
    pub action: &'static str,
    pub stream: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Creates every missing stream and updates those whose configuration differs; then the marks
/// bucket. Returns what was done to each, by name.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Vec<(&'static str, Ensured)>, EnsureError> {
    let mut done = Vec::new();
    for stream in Stream::ALL {
        let name = stream.name();
        let fail = |action: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| EnsureError {
                action,
                stream: name,
                source: e,
            }
        };
        let want = config(stream, settings);
        let outcome = match js.get_stream(name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| fail("reading")(e.into()))?;
                if differs(&want, &info.config) {
                    js.update_stream(&want)
                        .await
                        .map_err(|e| fail("updating")(e.into()))?;
                    Ensured::Updated
                } else {
                    Ensured::Unchanged
                }
            }
            Err(e) if not_found(&e) => {
                js.create_stream(want)
                    .await
                    .map_err(|e| fail("creating")(e.into()))?;
                Ensured::Created
            }
            Err(e) => return Err(fail("reading")(e.into())),
        };
        done.push((name, outcome));
    }
    done.push((MARKS_BUCKET, ensure_marks(js, settings).await?));
    done.push((FILES_BUCKET, ensure_files(js, settings).await?));
    Ok(done)
}

/// Creates the marks bucket, or sets its replicas.
async fn ensure_marks(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Ensured, EnsureError> {
    let fail = |action: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| EnsureError {
            action,
            stream: MARKS_BUCKET,
            source: e,
        }
    };
    let want = marks_config(settings);
    let outcome = match js.get_stream(format!("KV_{MARKS_BUCKET}")).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            if have.num_replicas.max(1) == want.num_replicas.max(1)
                && have.max_messages_per_subject == want.history
            {
                return Ok(Ensured::Unchanged);
            }
            Ensured::Updated
        }
        Err(e) if not_found(&e) => Ensured::Created,
        Err(e) => return Err(fail("reading")(e.into())),
    };
    js.create_or_update_key_value(want)
        .await
        .map_err(|e| fail("creating or updating")(e.into()))?;
    Ok(outcome)
}

/// Creates the files bucket, or sets its replicas.
async fn ensure_files(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Ensured, EnsureError> {
    let fail = |action: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| EnsureError {
            action,
            stream: FILES_BUCKET,
            source: e,
        }
    };
    let want = files_config(settings);
    match js.get_stream(FILES_STREAM).await {
        Ok(existing) => {
            let have = existing.cached_info().config.clone();
            if have.num_replicas.max(1) == want.num_replicas.max(1) {
                return Ok(Ensured::Unchanged);
            }
            // The object store's own configuration (subjects, rollups, direct gets) is kept;
            // only the replicas follow the streams'.
            let changed = Config {
                num_replicas: want.num_replicas,
                ..have
            };
            js.update_stream(&changed)
                .await
                .map_err(|e| fail("updating")(e.into()))?;
            Ok(Ensured::Updated)
        }
        Err(e) if not_found(&e) => {
            js.create_object_store(want)
                .await
                .map_err(|e| fail("creating")(e.into()))?;
            Ok(Ensured::Created)
        }
        Err(e) => Err(fail("reading")(e.into())),
    }
}

/// Whether the files bucket exists (the edge needs it; the handlers do not).
pub async fn files_exist(js: &jetstream::Context) -> Result<bool, EnsureError> {
    match js.get_stream(FILES_STREAM).await {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(EnsureError {
            action: "reading",
            stream: FILES_BUCKET,
            source: e.into(),
        }),
    }
}

/// Whether reading a stream failed because it does not exist.
fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// What [`check`] found of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// As this version configures it.
    Current,
    /// There, configured otherwise (an older `chatlog setup`, or an operator's change).
    Differs,
    Missing,
}

/// Reads every stream's configuration without changing anything: what the edge and the handlers
/// do at start, since only `chatlog setup` (with admin credentials) creates and updates streams.
pub async fn check(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Vec<(Stream, Checked)>, EnsureError> {
    let mut found = Vec::new();
    for stream in Stream::ALL {
        let name = stream.name();
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| EnsureError {
            action: "reading",
            stream: name,
            source: e,
        };
        let checked = match js.get_stream(name).await {
            Ok(existing) => {
                if differs(&config(stream, settings), &existing.cached_info().config) {
                    Checked::Differs
                } else {
                    Checked::Current
                }
            }
            Err(e) if not_found(&e) => Checked::Missing,
            Err(e) => return Err(fail(e.into())),
        };
        found.push((stream, checked));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_log_is_append_only_and_republished() {
        let c = config(Stream::Rooms, &StreamSettings::default());
        assert_eq!(c.name, "CHAT_ROOMS");
        assert_eq!(c.subjects, vec!["chat.room.*".to_string()]);
        assert_eq!(c.discard, DiscardPolicy::New);
        assert!(c.deny_delete && c.deny_purge);
        assert_eq!(c.max_message_size, 64 * 1024);
        assert!(c.duplicate_window >= Duration::from_secs(120));
        let rp = c.republish.expect("rooms are republished");
        assert_eq!(
            (rp.source.as_str(), rp.destination.as_str()),
            ("chat.room.>", "live.room.>")
        );
        assert!(!rp.headers_only);
    }

    #[test]
    fn every_stream_of_client_events_but_accounts_has_a_live_copy() {
        for c in configs(&StreamSettings::default()) {
            assert_eq!(
                c.republish.is_some(),
                !["CHAT_ACCOUNTS", "CHAT_FUNCTIONS", "CHAT_DEAD"].contains(&c.name.as_str()),
                "{}",
                c.name
            );
        }
        assert!(config(Stream::Dead, &StreamSettings::default()).max_age > Duration::ZERO);
        assert_eq!(
            config(Stream::Functions, &StreamSettings::default()).max_age,
            Duration::ZERO
        );
        assert!(config(Stream::Presence, &StreamSettings::default()).max_age > Duration::ZERO);
    }

    #[test]
    fn a_subject_maps_to_its_stream() {
        assert_eq!(Stream::of_subject("chat.room.lobby"), Some(Stream::Rooms));
        assert_eq!(Stream::of_subject("chat.user.ada"), Some(Stream::Users));
        assert_eq!(Stream::of_subject("chat.roomx.a"), None);
        assert_eq!(Stream::of_subject("live.room.a"), None);
    }
}
