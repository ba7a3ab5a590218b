//! The functions' wire format: the registry's events (`CHAT_FUNCTIONS`, on
//! `chat.function.<name>`), the dead letters' subjects and headers (`CHAT_DEAD`, on
//! `chat.dead.<name>`), and the attributes the runtime adds to what it delivers and stores
//! (docs/protocol.md §9).
//!
//! Registry events are CloudEvents like the others but not [`crate::Payload`]s: no view and no
//! client reads them, and they hold each function's secret.

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    ids::{EventId, IdError, UserId},
    streams::Stream,
    subjects::headers,
};

/// `type` of a registration (or of a change to a registered function).
pub const REGISTERED: &str = "chat.function.registered";
/// `type` of a removal.
pub const REMOVED: &str = "chat.function.removed";
/// The extension attribute counting how many function answers led to an event (absent: 0).
pub const HOPS: &str = "chatloghops";
/// Most hops an event may have: an answer that would have more is not stored.
pub const MAX_HOPS: u32 = 4;
/// `source` of a function's answers is `/chatlog/function/<name>`: this is the component.
pub const COMPONENT_PREFIX: &str = "function/";

/// Whether an event of `component` was stored by the functions runtime as a function's answer.
/// Only the runtime appends such events, and it appends a function's `chat.message.deleted` only
/// where the operator granted that function moderation, so views take it as a moderator's.
pub fn is_function(component: &str) -> bool {
    component.starts_with(COMPONENT_PREFIX)
}
/// HTTP header of a delivery: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "Chatlog-Signature";

/// Headers of a dead letter, beside `Nats-Msg-Id` and `Content-Type`.
pub mod dead_headers {
    /// Why the function did not take it (its last answer or error).
    pub const REASON: &str = "Chatlog-Dead-Reason";
    /// How many calls were made.
    pub const TRIES: &str = "Chatlog-Dead-Tries";
    /// The stream, sequence and subject the event is stored at.
    pub const STREAM: &str = "Chatlog-Dead-Stream";
    pub const SEQ: &str = "Chatlog-Dead-Seq";
    pub const SUBJECT: &str = "Chatlog-Dead-Subject";
}

/// A function's name: an id (`^[a-z0-9][a-z0-9_-]{0,31}$`), so it can be a subject token, a
/// consumer name's part and an answer's `data.user`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(String);

impl FunctionName {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        UserId::parse(s.as_str())?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The author of the function's answers: its name (valid as a user id by construction).
    pub fn as_user(&self) -> UserId {
        UserId::parse(self.0.as_str()).expect("a function name is a valid user id")
    }

    /// `function/<name>`: the component of its answers (`source: /chatlog/function/<name>`).
    pub fn component(&self) -> String {
        format!("{COMPONENT_PREFIX}{}", self.0)
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for FunctionName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for FunctionName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FunctionName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Where a function's registry events are stored.
pub fn subject(name: &FunctionName) -> String {
    format!("{}.{name}", Stream::Functions.subject_prefix())
}

/// Every function's registry subject.
pub fn all_subjects() -> String {
    format!("{}.*", Stream::Functions.subject_prefix())
}

/// Where the events a function did not take are kept.
pub fn dead_subject(name: &FunctionName) -> String {
    format!("{}.{name}", Stream::Dead.subject_prefix())
}

/// The streams a function may read, by the name the CLI and the registry use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Rooms,
    Users,
    Presence,
}

impl Source {
    pub fn stream(self) -> Stream {
        match self {
            Source::Rooms => Stream::Rooms,
            Source::Users => Stream::Users,
            Source::Presence => Stream::Presence,
        }
    }

    /// Every subject of the stream, the filter's default.
    pub fn all_subjects(self) -> String {
        format!("{}.>", self.stream().subject_prefix())
    }
}

/// What a registration says: where to call, with which secret, for which events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub url: String,
    pub secret: String,
    pub stream: Source,
    /// A NATS subject pattern within the stream, e.g. `chat.room.>` or `chat.room.lobby`.
    pub subject: String,
    /// Event types delivered; empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Rooms where the operator granted the function moderation: its answers there may delete
    /// anyone's message (`chat.message.deleted`). Each must be one its filter covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moderates: Vec<crate::RoomId>,
}

/// Longest URL and secret a registration may hold, in bytes.
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_SECRET_LEN: usize = 512;
/// Shortest secret: a signature keyed by a guessable secret proves nothing.
pub const MIN_SECRET_LEN: usize = 16;

impl FunctionSpec {
    /// Whether the spec is one the runtime can run (the CLI refuses others; the runtime ignores
    /// others that reached the log).
    pub fn validate(&self) -> Result<(), String> {
        if self.url.len() > MAX_URL_LEN || self.url.chars().any(|c| c.is_whitespace()) {
            return Err("the url is too long or holds a space".into());
        }
        if !self.url.starts_with("http://") {
            return Err("the url must start with http:// (https is not supported yet)".into());
        }
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&self.secret.len())
            || self.secret.chars().any(|c| c.is_control())
        {
            return Err(format!(
                "the secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes, without control characters"
            ));
        }
        check_pattern(self.stream, &self.subject)?;
        for ty in &self.types {
            match crate::EventType::parse(ty) {
                Some(t) if t.stream() == self.stream.stream() => {}
                Some(_) => return Err(format!("{ty} is not stored in {:?}", self.stream)),
                None => return Err(format!("unknown event type {ty:?}")),
            }
        }
        for room in &self.moderates {
            if self.stream != Source::Rooms || !self.covers(&crate::subjects::room(room)) {
                return Err(format!(
                    "--moderates {room}: the function's filter does not cover that room"
                ));
            }
        }
        Ok(())
    }

    /// Whether the operator granted the function moderation of `room`.
    pub fn moderates(&self, room: &crate::RoomId) -> bool {
        self.moderates.contains(room)
    }

    /// Whether `subject` (a stored event's) is one this spec's pattern matches.
    pub fn covers(&self, subject: &str) -> bool {
        subject_matches(&self.subject, subject)
    }

    /// Whether an event of type `ty` is delivered.
    pub fn wants(&self, ty: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == ty)
    }
}

/// A subject pattern of `source`'s stream: `<prefix>.<id>`, `<prefix>.*` or `<prefix>.>`.
fn check_pattern(source: Source, pattern: &str) -> Result<(), String> {
    let prefix = source.stream().subject_prefix();
    let rest = pattern
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| format!("the subject must start with {prefix}."))?;
    if rest == "*" || rest == ">" || crate::RoomId::parse(rest).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "the subject must be {prefix}.<id>, {prefix}.* or {prefix}.>"
        ))
    }
}

/// NATS subject matching: `*` one token, `>` one or more at the end.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A registry change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Registered(FunctionSpec),
    Removed,
}

/// One registry event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: EventId,
    pub name: FunctionName,
    pub time: DateTime<Utc>,
    pub change: Change,
}

/// Why a stored body is not a registry event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a cloudevent: {0}")]
    Envelope(#[from] serde_json::Error),
    #[error("not a registry event: {0}")]
    Attribute(String),
}

const SOURCE: &str = "/chatlog/cli";

impl Record {
    pub fn new(name: FunctionName, change: Change) -> Self {
        Self {
            id: EventId::new(),
            name,
            time: Utc::now().trunc_subsecs(6),
            change,
        }
    }

    /// Subject, headers (`Content-Type`, `Nats-Msg-Id`) and body of the append.
    pub fn encode(&self) -> Result<(String, HeaderMap, Bytes), String> {
        let (ty, data) = match &self.change {
            Change::Registered(spec) => (
                REGISTERED,
                serde_json::to_value(spec).map_err(|e| e.to_string())?,
            ),
            Change::Removed => (REMOVED, serde_json::json!({})),
        };
        let event = EventBuilderV10::new()
            .id(self.id.to_string())
            .source(SOURCE)
            .ty(ty)
            .subject(self.name.as_str())
            .time(self.time)
            .data("application/json", data)
            .build()
            .map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        let mut h = HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, headers::CLOUDEVENTS_JSON);
        h.insert(headers::MSG_ID, self.id.to_string().as_str());
        Ok((subject(&self.name), h, Bytes::from(body)))
    }

    pub fn decode(body: &[u8]) -> Result<Self, RecordError> {
        let attr = |what: &str| RecordError::Attribute(what.to_string());
        let event: Event = serde_json::from_slice(body)?;
        let id = EventId::parse(event.id()).map_err(|_| attr("id is not a uuid"))?;
        let name = FunctionName::parse(event.subject().unwrap_or_default())
            .map_err(|_| attr("subject is not a function name"))?;
        let time = *event.time().ok_or_else(|| attr("time is missing"))?;
        let change = match event.ty() {
            REGISTERED => {
                let spec = match event.data() {
                    Some(Data::Json(v)) => serde_json::from_value(v.clone())?,
                    Some(Data::String(s)) => serde_json::from_str(s)?,
                    Some(Data::Binary(b)) => serde_json::from_slice(b)?,
                    None => return Err(attr("no data")),
                };
                Change::Registered(spec)
            }
            REMOVED => Change::Removed,
            other => return Err(attr(&format!("unknown type {other:?}"))),
        };
        Ok(Self {
            id,
            name,
            time,
            change,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            url: "http://127.0.0.1:9000/hook".into(),
            secret: "0123456789abcdef".into(),
            stream: Source::Rooms,
            subject: "chat.room.>".into(),
            types: vec!["chat.message.posted".into()],
            moderates: vec![],
        }
    }

    #[test]
    fn a_record_round_trips() {
        let name = FunctionName::parse("echo").unwrap();
        for change in [Change::Registered(spec()), Change::Removed] {
            let record = Record::new(name.clone(), change);
            let (subject, headers, body) = record.encode().unwrap();
            assert_eq!(subject, "chat.function.echo");
            assert!(headers.get("Nats-Msg-Id").is_some());
            assert_eq!(Record::decode(&body).unwrap(), record);
        }
        assert!(Record::decode(b"{}").is_err());
        assert!(Record::decode(b"garbage").is_err());
    }

    #[test]
    fn a_spec_is_validated() {
        assert_eq!(spec().validate(), Ok(()));
        let bad = |f: fn(&mut FunctionSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate().is_err()
        };
        assert!(bad(|s| s.url = "ftp://x".into()));
        assert!(bad(|s| s.url = "http://a b".into()));
        assert!(bad(|s| s.secret = "short".into()));
        assert!(bad(|s| s.subject = "chat.user.>".into()));
        assert!(bad(|s| s.subject = "chat.room.a.b".into()));
        assert!(bad(|s| s.subject = "chat.room.A".into()));
        assert!(bad(|s| s.types = vec!["chat.read.marked".into()]));
        assert!(bad(|s| s.types = vec!["nope".into()]));
        let mut users = spec();
        users.stream = Source::Users;
        users.subject = "chat.user.ada".into();
        users.types = vec!["chat.read.marked".into()];
        assert_eq!(users.validate(), Ok(()));
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("chat.room.>", "chat.room.lobby"));
        assert!(subject_matches("chat.room.*", "chat.room.lobby"));
        assert!(subject_matches("chat.room.lobby", "chat.room.lobby"));
        assert!(!subject_matches("chat.room.lobby", "chat.room.dev"));
        assert!(!subject_matches("chat.room.>", "chat.room"));
        assert!(!subject_matches("chat.room.*", "chat.room.a.b"));
        assert!(!subject_matches("chat.room.>", "chat.user.ada"));
    }

    #[test]
    fn names_are_ids() {
        assert!(FunctionName::parse("echo-bot").is_ok());
        for bad in ["", "a.b", "Echo", "a>", &"x".repeat(33)] {
            assert!(FunctionName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            FunctionName::parse("echo").unwrap().component(),
            "function/echo"
        );
    }
}
