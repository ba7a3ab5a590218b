//! The registry: `CHAT_FUNCTIONS` folded into the functions it names ([`Registry::apply`], a
//! pure function), and reading and appending it over NATS (the CLI's `add`, `rm`, `ls`).

use std::collections::BTreeMap;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use chatlog_events::{
    ChatEvent, Payload, Stream,
    event::AccountReserved,
    functions::{Change, FunctionName, FunctionSpec, Record},
    subjects::headers,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;

/// A registered function as the runtime runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: FunctionName,
    pub spec: FunctionSpec,
    /// Sequence of the registration that set the current filter: a new filter is a new
    /// consumer, so a changed filter starts over rather than half-applying to events in hand.
    pub generation: u64,
    /// Events stored from this time on are delivered (the consumer's start).
    pub since: DateTime<Utc>,
}

impl Function {
    /// The durable consumer holding the function's position.
    pub fn consumer(&self) -> String {
        consumer_name(&self.name, self.generation)
    }
}

/// Every function's consumer starts so; the runtime deletes those of no current function.
pub const CONSUMER_PREFIX: &str = "fn-";

pub fn consumer_name(name: &FunctionName, generation: u64) -> String {
    format!("{CONSUMER_PREFIX}{name}-{generation}")
}

/// What one registry event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Added,
    /// URL or secret changed: the same consumer goes on.
    Updated,
    /// The filter changed: a new consumer, from this event's time.
    Refiltered,
    Removed,
    /// Not applied, and why (a spec the runtime cannot run, a removal of nothing).
    Ignored(String),
}

/// The registry as of some sequence of `CHAT_FUNCTIONS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    functions: BTreeMap<FunctionName, Function>,
    /// Each name's last sequence, registered or not: appends expect it.
    last: BTreeMap<FunctionName, u64>,
    /// The last sequence applied.
    pub seq: u64,
}

impl Registry {
    /// Applies the registry event stored at `seq`.
    pub fn apply(&mut self, seq: u64, record: &Record) -> Applied {
        self.seq = self.seq.max(seq);
        self.last.insert(record.name.clone(), seq);
        match &record.change {
            Change::Registered(spec) => {
                if let Err(why) = spec.validate() {
                    return Applied::Ignored(why);
                }
                match self.functions.get_mut(&record.name) {
                    Some(f) if same_filter(&f.spec, spec) => {
                        f.spec = spec.clone();
                        Applied::Updated
                    }
                    Some(f) => {
                        f.spec = spec.clone();
                        f.generation = seq;
                        f.since = record.time;
                        Applied::Refiltered
                    }
                    None => {
                        self.functions.insert(
                            record.name.clone(),
                            Function {
                                name: record.name.clone(),
                                spec: spec.clone(),
                                generation: seq,
                                since: record.time,
                            },
                        );
                        Applied::Added
                    }
                }
            }
            Change::Removed => match self.functions.remove(&record.name) {
                Some(_) => Applied::Removed,
                None => Applied::Ignored("no such function".into()),
            },
        }
    }

    /// The registry of these events, in order.
    pub fn fold<'a>(records: impl IntoIterator<Item = (u64, &'a Record)>) -> Registry {
        let mut registry = Registry::default();
        for (seq, record) in records {
            registry.apply(seq, record);
        }
        registry
    }

    pub fn get(&self, name: &FunctionName) -> Option<&Function> {
        self.functions.get(name)
    }

    /// By name.
    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    pub fn len(&self) -> usize {
        self.functions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The last sequence of `name`'s subject (0: none): what an append about it expects.
    pub fn last_seq(&self, name: &FunctionName) -> u64 {
        self.last.get(name).copied().unwrap_or(0)
    }
}

fn same_filter(a: &FunctionSpec, b: &FunctionSpec) -> bool {
    a.stream == b.stream && a.subject == b.subject && a.types == b.types
}

/// Reading or appending the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    Refused(String),
}

fn nats(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Nats(e.to_string())
}

/// The registry as stored now (events that are not registry events are skipped, with a warning).
pub async fn load(js: &jetstream::Context) -> Result<Registry, RegistryError> {
    let mut stream = js
        .get_stream(Stream::Functions.name())
        .await
        .map_err(nats)?;
    let last = stream.info().await.map_err(nats)?.state.last_sequence;
    let mut registry = Registry::default();
    if last == 0 {
        return Ok(registry);
    }
    let mut messages = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(nats)?
        .messages()
        .await
        .map_err(nats)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(nats)?;
        let info = message.info().map_err(nats)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        match Record::decode(&message.payload) {
            Ok(record) => {
                registry.apply(seq, &record);
            }
            Err(e) => tracing::warn!(seq, error = %e, "not a registry event: skipped"),
        }
        registry.seq = seq;
        if pending == 0 || seq >= last {
            break;
        }
    }
    Ok(registry)
}

/// Appends `record`, expecting `name`'s subject to be at `expected` (so two operators' changes
/// are not silently merged); answers the sequence it is stored at.
pub async fn append(
    js: &jetstream::Context,
    record: &Record,
    expected: u64,
) -> Result<u64, RegistryError> {
    let (subject, mut headers, body) = record.encode().map_err(RegistryError::Refused)?;
    headers.insert(
        headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    let ack = js
        .publish_with_headers(subject, headers, body)
        .await
        .map_err(nats)?
        .await
        .map_err(|e| {
            use async_nats::jetstream::context::PublishErrorKind;
            if e.kind() == PublishErrorKind::WrongLastSequence {
                RegistryError::Refused(format!("{} changed meanwhile: try again", record.name))
            } else {
                nats(e)
            }
        })?;
    Ok(ack.sequence)
}

/// `chatlog functions add`: registers `name`, or with `replace` changes the registered one.
pub async fn register(
    js: &jetstream::Context,
    name: FunctionName,
    spec: FunctionSpec,
    replace: bool,
) -> Result<u64, RegistryError> {
    spec.validate().map_err(RegistryError::Refused)?;
    let registry = load(js).await?;
    if registry.get(&name).is_some() && !replace {
        return Err(RegistryError::Refused(format!(
            "{name} is registered already: `rm` it first, or add with --replace"
        )));
    }
    reserve(js, &name).await?;
    let expected = registry.last_seq(&name);
    append(js, &Record::new(name, Change::Registered(spec)), expected).await
}

/// Reserves `name` as a user id (`chat.account.reserved`, stored only on an empty account
/// subject, as a guest's claim is), so that no guest or account can post as the function or be
/// taken for it; a name held by a user already is refused. Names stay reserved after `rm`, as
/// accounts are never deleted.
pub async fn reserve(js: &jetstream::Context, name: &FunctionName) -> Result<(), RegistryError> {
    let user = name.as_user();
    let event = ChatEvent::for_user(
        &user,
        user.clone(),
        "cli",
        Payload::AccountReserved(AccountReserved {
            by: "function".into(),
        }),
    );
    let encoded = event
        .encode()
        .map_err(|e| RegistryError::Refused(e.to_string()))?;
    let mut headers = encoded.headers;
    headers.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let stored = js
        .publish_with_headers(encoded.subject.clone(), headers, encoded.body)
        .await
        .map_err(nats)?
        .await;
    match stored {
        Ok(_) => Ok(()),
        Err(e)
            if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =>
        {
            let accounts = js.get_stream(Stream::Accounts.name()).await.map_err(nats)?;
            let first = accounts
                .direct_get_first_for_subject(encoded.subject.as_str())
                .await
                .map_err(nats)?;
            match ChatEvent::decode(&first.payload).map(|e| e.payload) {
                Ok(Payload::AccountReserved(_)) => Ok(()),
                _ => Err(RegistryError::Refused(format!(
                    "{name} is a user's name (an account or a guest): pick another, since a \
                     function's answers are signed with its name"
                ))),
            }
        }
        Err(e) => Err(nats(e)),
    }
}

/// `chatlog functions rm`.
pub async fn remove(js: &jetstream::Context, name: FunctionName) -> Result<u64, RegistryError> {
    let registry = load(js).await?;
    if registry.get(&name).is_none() {
        return Err(RegistryError::Refused(format!("no function {name}")));
    }
    let expected = registry.last_seq(&name);
    append(js, &Record::new(name, Change::Removed), expected).await
}

#[cfg(test)]
mod tests {
    use chatlog_events::functions::Source;

    use super::*;

    fn name(s: &str) -> FunctionName {
        FunctionName::parse(s).unwrap()
    }

    fn spec(url: &str, subject: &str) -> FunctionSpec {
        FunctionSpec {
            url: url.into(),
            secret: "0123456789abcdef".into(),
            stream: Source::Rooms,
            subject: subject.into(),
            types: vec![],
            moderates: vec![],
        }
    }

    fn at(secs: i64, n: &str, change: Change) -> Record {
        let mut r = Record::new(name(n), change);
        r.time = DateTime::from_timestamp(secs, 0).unwrap();
        r
    }

    #[test]
    fn given_registrations_the_registry_holds_each_function_once() {
        let a = at(
            10,
            "echo",
            Change::Registered(spec("http://a/", "chat.room.>")),
        );
        let b = at(
            11,
            "dice",
            Change::Registered(spec("http://b/", "chat.room.dev")),
        );
        let mut r = Registry::default();
        assert_eq!(r.apply(1, &a), Applied::Added);
        assert_eq!(r.apply(2, &b), Applied::Added);
        let names: Vec<_> = r.iter().map(|f| f.name.as_str().to_string()).collect();
        assert_eq!(names, ["dice", "echo"]);
        let echo = r.get(&name("echo")).unwrap();
        assert_eq!((echo.generation, echo.since.timestamp()), (1, 10));
        assert_eq!(echo.consumer(), "fn-echo-1");
        assert_eq!((r.last_seq(&name("echo")), r.seq), (1, 2));
        assert_eq!(Registry::fold([(1, &a), (2, &b)]), r);
    }

    #[test]
    fn when_the_url_or_secret_changes_the_consumer_goes_on() {
        let mut r = Registry::default();
        r.apply(
            1,
            &at(
                10,
                "echo",
                Change::Registered(spec("http://a/", "chat.room.>")),
            ),
        );
        let mut moved = spec("http://b/", "chat.room.>");
        moved.secret = "another secret 16".into();
        assert_eq!(
            r.apply(5, &at(20, "echo", Change::Registered(moved.clone()))),
            Applied::Updated
        );
        let f = r.get(&name("echo")).unwrap();
        assert_eq!((f.generation, f.since.timestamp()), (1, 10));
        assert_eq!(f.spec, moved);
        assert_eq!(r.last_seq(&name("echo")), 5);
    }

    #[test]
    fn when_the_filter_changes_a_new_consumer_starts_at_the_change() {
        let mut r = Registry::default();
        r.apply(
            1,
            &at(
                10,
                "echo",
                Change::Registered(spec("http://a/", "chat.room.>")),
            ),
        );
        assert_eq!(
            r.apply(
                7,
                &at(
                    30,
                    "echo",
                    Change::Registered(spec("http://a/", "chat.room.dev"))
                )
            ),
            Applied::Refiltered
        );
        let f = r.get(&name("echo")).unwrap();
        assert_eq!(
            (f.consumer(), f.since.timestamp()),
            ("fn-echo-7".into(), 30)
        );
    }

    #[test]
    fn when_removed_it_is_gone_and_a_new_registration_starts_afresh() {
        let mut r = Registry::default();
        r.apply(
            1,
            &at(
                10,
                "echo",
                Change::Registered(spec("http://a/", "chat.room.>")),
            ),
        );
        assert_eq!(
            r.apply(2, &at(11, "echo", Change::Removed)),
            Applied::Removed
        );
        assert!(r.is_empty());
        assert_eq!(r.last_seq(&name("echo")), 2);
        assert!(matches!(
            r.apply(3, &at(12, "echo", Change::Removed)),
            Applied::Ignored(_)
        ));
        assert_eq!(
            r.apply(
                4,
                &at(
                    13,
                    "echo",
                    Change::Registered(spec("http://a/", "chat.room.>"))
                )
            ),
            Applied::Added
        );
        assert_eq!(r.get(&name("echo")).unwrap().consumer(), "fn-echo-4");
    }

    #[test]
    fn a_registration_the_runtime_cannot_run_is_ignored() {
        let mut r = Registry::default();
        let bad = at(
            10,
            "echo",
            Change::Registered(spec("ftp://a/", "chat.room.>")),
        );
        assert!(matches!(r.apply(1, &bad), Applied::Ignored(_)));
        assert!(r.is_empty());
        // A bad change leaves the running function as it was.
        r.apply(
            2,
            &at(
                11,
                "echo",
                Change::Registered(spec("http://a/", "chat.room.>")),
            ),
        );
        assert!(matches!(r.apply(3, &bad), Applied::Ignored(_)));
        assert_eq!(r.get(&name("echo")).unwrap().spec.url, "http://a/");
    }
}
