//! Event types and their CloudEvents 1.0 structured-JSON encoding.
//!
//! A [`ChatEvent`] is the envelope (id, source, subject, time, who acted, trace context) around a
//! typed [`Payload`]. [`ChatEvent::encode`] turns it into what is appended to JetStream: subject,
//! headers (`Content-Type`, `Nats-Msg-Id`) and body; [`ChatEvent::decode`] reads a stored body
//! back. The CloudEvent itself is `cloudevents-sdk`'s `Event`, so the attribute rules of the spec
//! are the SDK's.

use std::io::Write as _;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::{
    ids::{EventId, RoomId, UserId},
    streams::Stream,
    subjects::headers,
};

/// `chat.room.created`: `members` lists who may see a private room (its creator included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub name: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub private: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<UserId>,
}

/// `chat.room.updated`: only the fields that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `chat.member.joined` / `chat.member.left`: `member` added to or removed from a private room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub member: UserId,
}

/// `chat.message.posted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub text: String,
    #[serde(default)]
    pub mentions: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<EventId>,
    /// Files uploaded to the room by the author, as they were when posted (docs/protocol.md §8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file a message carries: what a reader needs to show and fetch it (`GET /api/files/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// `<room>.<sha256 hex>`: the room's copy of those bytes.
    pub id: String,
    pub name: String,
    pub size: u64,
    pub content_type: String,
}

/// `chat.message.edited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub message_id: EventId,
    pub text: String,
}

/// `chat.message.deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub message_id: EventId,
}

/// `chat.reaction.added` / `chat.reaction.removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub message_id: EventId,
    pub emoji: String,
}

/// `chat.presence.online` / `heartbeat` / `offline`: `connection` is opaque, one per socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub connection: String,
    /// A heartbeat's: every room the connection is in, beside its subject's (one heartbeat per
    /// connection and period, however many rooms it joined).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<RoomId>,
}

impl Presence {
    /// The data of an `online` or `offline`: the connection alone.
    pub fn of(connection: impl Into<String>) -> Self {
        Self {
            connection: connection.into(),
            rooms: Vec::new(),
        }
    }
}

/// Events with nothing beside `user` (`chat.typing.started` / `stopped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `chat.read.marked`: read up to and including `seq` in `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarked {
    pub room: RoomId,
    pub seq: u64,
}

/// `chat.notification.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationCreated {
    pub room: RoomId,
    pub seq: u64,
    pub message_id: EventId,
    pub by: UserId,
    pub text: String,
    pub reason: String,
}

/// `chat.notification.read`: some notifications by id, or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRead {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<EventId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// `chat.account.registered`: an argon2id PHC string, never a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRegistered {
    pub password_hash: String,
}

/// `chat.guest.claimed`: a guest's claim on a free name, on the account subject of that name, so
/// that a name is a guest's or an account's, never both. Only the SHA-256 of the guest's secret
/// is kept (hex): the secret is random, so a fast hash is enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestClaimed {
    pub secret_sha256: String,
}

/// `chat.account.reserved`: a name the operator reserved, on the account subject of that name, so
/// that no guest or account can take it: a function's name (its answers' author) is reserved when
/// it is first registered. `by` says for what (`function`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountReserved {
    pub by: String,
}

macro_rules! payloads {
    ($($variant:ident($data:ty) = $ty:literal in $stream:ident,)*) => {
        /// What happened: one variant per CloudEvent `type` of the protocol.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Payload {
            $($variant($data),)*
        }

        /// A CloudEvent `type` of the protocol, without its data: what code that only routes a
        /// stored body needs ([`EventType::of`] reads it without decoding the body).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $ty,)*
                }
            }

            /// The type named `ty`, if this crate knows it.
            pub fn parse(ty: &str) -> Option<EventType> {
                match ty {
                    $($ty => Some(EventType::$variant),)*
                    _ => None,
                }
            }

            /// The stream events of this type are stored in.
            pub fn stream(self) -> Stream {
                match self {
                    $(EventType::$variant => Stream::$stream,)*
                }
            }
        }

        impl Payload {
            /// Every CloudEvent `type` this crate knows.
            pub const TYPES: &'static [&'static str] = &[$($ty,)*];

            /// The CloudEvent `type`.
            pub fn event_type(&self) -> &'static str {
                self.kind().as_str()
            }

            /// The type, without the data.
            pub fn kind(&self) -> EventType {
                match self {
                    $(Payload::$variant(_) => EventType::$variant,)*
                }
            }

            /// The stream events of this type are stored in.
            pub fn stream(&self) -> Stream {
                match self {
                    $(Payload::$variant(_) => Stream::$stream,)*
                }
            }

            fn to_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
                match self {
                    $(Payload::$variant(d) => to_map(d),)*
                }
            }

            /// The data's fields as a JSON object, written to `out`.
            fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
                match self {
                    $(Payload::$variant(d) => serde_json::to_writer(out, d),)*
                }
            }

            fn from_value(ty: &str, data: Value) -> Result<Self, DecodeError> {
                match ty {
                    $($ty => from_value(data).map(Payload::$variant),)*
                    other => Err(DecodeError::UnknownType(other.to_string())),
                }
            }

            fn from_raw(ty: &str, data: &str) -> Result<Self, DecodeError> {
                match ty {
                    $($ty => serde_json::from_str(data).map(Payload::$variant).map_err(DecodeError::Data),)*
                    other => Err(DecodeError::UnknownType(other.to_string())),
                }
            }
        }
    };
}

payloads! {
    RoomCreated(RoomCreated) = "chat.room.created" in Rooms,
    RoomUpdated(RoomUpdated) = "chat.room.updated" in Rooms,
    MemberJoined(Membership) = "chat.member.joined" in Rooms,
    MemberLeft(Membership) = "chat.member.left" in Rooms,
    MessagePosted(MessagePosted) = "chat.message.posted" in Rooms,
    MessageEdited(MessageEdited) = "chat.message.edited" in Rooms,
    MessageDeleted(MessageDeleted) = "chat.message.deleted" in Rooms,
    ReactionAdded(Reaction) = "chat.reaction.added" in Rooms,
    ReactionRemoved(Reaction) = "chat.reaction.removed" in Rooms,
    PresenceOnline(Presence) = "chat.presence.online" in Presence,
    PresenceHeartbeat(Presence) = "chat.presence.heartbeat" in Presence,
    PresenceOffline(Presence) = "chat.presence.offline" in Presence,
    TypingStarted(Empty) = "chat.typing.started" in Presence,
    TypingStopped(Empty) = "chat.typing.stopped" in Presence,
    ReadMarked(ReadMarked) = "chat.read.marked" in Users,
    NotificationCreated(NotificationCreated) = "chat.notification.created" in Users,
    NotificationRead(NotificationRead) = "chat.notification.read" in Users,
    AccountRegistered(AccountRegistered) = "chat.account.registered" in Accounts,
    GuestClaimed(GuestClaimed) = "chat.guest.claimed" in Accounts,
    AccountReserved(AccountReserved) = "chat.account.reserved" in Accounts,
}

impl EventType {
    /// The `type` of a stored body, without decoding it (`None`: not an event this crate knows,
    /// or not JSON). What the encoder writes has it right after `specversion`, `id` and `source`
    /// (JSON strings, in which an unescaped `,"type":"` cannot occur), so it is found there;
    /// a body written otherwise is parsed for it.
    pub fn of(body: &[u8]) -> Option<EventType> {
        const OURS: &[u8] = br#"{"specversion":"1.0","id":""#;
        const KEY: &[u8] = br#","type":""#;
        if body.starts_with(OURS)
            && let Some(at) = body.windows(KEY.len()).position(|w| w == KEY)
        {
            let rest = &body[at + KEY.len()..];
            let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            if rest[end] == b'"' {
                return EventType::parse(std::str::from_utf8(&rest[..end]).ok()?);
            }
        }
        #[derive(Deserialize)]
        struct TypeOnly<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
        }
        EventType::parse(&serde_json::from_slice::<TypeOnly>(body).ok()?.ty)
    }
}

fn to_map<T: Serialize>(data: &T) -> Result<Map<String, Value>, serde_json::Error> {
    match serde_json::to_value(data)? {
        Value::Object(map) => Ok(map),
        _ => Err(serde::ser::Error::custom(
            "event data must be a json object",
        )),
    }
}

fn from_value<T: DeserializeOwned>(data: Value) -> Result<T, DecodeError> {
    serde_json::from_value(data).map_err(DecodeError::Data)
}

/// One action, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatEvent {
    pub id: EventId,
    /// The component that appended it: `edge`, `notifications`, ... (`source` is
    /// `/chatlog/<component>`).
    pub component: String,
    /// The room (room and presence events) or user (user and account events) it is about; the
    /// last token of its NATS subject. Already validated: it is a [`RoomId`] or [`UserId`].
    subject: String,
    /// When it happened, UTC, whole microseconds (what survives an RFC 3339 round trip).
    pub time: DateTime<Utc>,
    /// Who acted.
    pub user: UserId,
    /// W3C trace context of the action, when there is one.
    pub traceparent: Option<String>,
    /// How many function answers led to it (the `chatloghops` extension, absent when 0).
    pub hops: u32,
    pub payload: Payload,
}

/// A [`ChatEvent`] ready to be appended.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `chat.room.<room>`, `chat.user.<user>`, ...
    pub subject: String,
    /// `Content-Type: application/cloudevents+json` and `Nats-Msg-Id: <event id>`.
    pub headers: HeaderMap,
    /// The structured-mode CloudEvent JSON.
    pub body: Bytes,
}

/// Why a stored message is not a chatlog event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a cloudevent: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("bad event data: {0}")]
    Data(#[source] serde_json::Error),
    #[error("event has no json object data")]
    NoData,
    #[error("bad event attribute: {0}")]
    Attribute(String),
}

/// An event could not be built (a bug, not bad input: every field is typed).
#[derive(Debug, thiserror::Error)]
#[error("encoding event: {0}")]
pub struct EncodeError(String);

const SOURCE_PREFIX: &str = "/chatlog/";

/// The subject of a stored event is the id its stream is keyed by: a room or a user.
fn check_subject(payload: &Payload, subject: &str) -> Result<(), DecodeError> {
    let valid = match payload.stream() {
        Stream::Rooms | Stream::Presence => RoomId::parse(subject).is_ok(),
        Stream::Users | Stream::Accounts => UserId::parse(subject).is_ok(),
        Stream::Functions | Stream::Dead => false,
    };
    if valid {
        Ok(())
    } else {
        Err(DecodeError::Attribute("subject is not a valid id".into()))
    }
}
use crate::functions::HOPS;
const TRACEPARENT: &str = "traceparent";

impl ChatEvent {
    /// A new event about `room` (for room and presence payloads), with a fresh id and now as time.
    pub fn in_room(room: &RoomId, user: UserId, component: &str, payload: Payload) -> Self {
        Self::with_subject(room.as_str(), user, component, payload)
    }

    /// A new event about `target` (for user and account payloads).
    pub fn for_user(target: &UserId, user: UserId, component: &str, payload: Payload) -> Self {
        Self::with_subject(target.as_str(), user, component, payload)
    }

    fn with_subject(subject: &str, user: UserId, component: &str, payload: Payload) -> Self {
        Self {
            id: EventId::new(),
            component: component.to_string(),
            subject: subject.to_string(),
            time: Utc::now().trunc_subsecs(6),
            user,
            traceparent: None,
            hops: 0,
            payload,
        }
    }

    /// Sets the id (the client's id for the action, or a derived one).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the time (tests and derived events carry the time of their cause).
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time.trunc_subsecs(6);
        self
    }

    /// The id the event is about: the room or the user.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The room, for room and presence events.
    pub fn room(&self) -> Option<RoomId> {
        match self.payload.stream() {
            Stream::Rooms | Stream::Presence => RoomId::parse(self.subject.as_str()).ok(),
            Stream::Users | Stream::Accounts | Stream::Functions | Stream::Dead => None,
        }
    }

    /// `chat.room.<room>`, ...: where the event is stored.
    pub fn nats_subject(&self) -> String {
        format!(
            "{}.{}",
            self.payload.stream().subject_prefix(),
            self.subject
        )
    }

    /// The structured-mode CloudEvent.
    pub fn to_cloudevent(&self) -> Result<Event, EncodeError> {
        let mut data = self
            .payload
            .to_map()
            .map_err(|e| EncodeError(e.to_string()))?;
        data.insert("user".into(), Value::String(self.user.to_string()));
        let mut builder = EventBuilderV10::new()
            .id(self.id.to_string())
            .source(format!("{SOURCE_PREFIX}{}", self.component))
            .ty(self.payload.event_type())
            .subject(self.subject.clone())
            .time(self.time)
            .data("application/json", Value::Object(data));
        if let Some(tp) = &self.traceparent {
            builder = builder.extension(TRACEPARENT, tp.clone());
        }
        if self.hops > 0 {
            builder = builder.extension(HOPS, i64::from(self.hops));
        }
        builder.build().map_err(|e| EncodeError(e.to_string()))
    }

    /// The JSON body stored in the log: the CloudEvent of [`ChatEvent::to_cloudevent`] in
    /// structured mode, written directly. Going through the SDK's `Event` (a JSON tree for `data`,
    /// strings for every attribute) was a tenth of the edge's time on appends; the tests check
    /// that both give the same JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, EncodeError> {
        let err = |e: serde_json::Error| EncodeError(e.to_string());
        let mut out = Vec::with_capacity(256 + self.data_len_hint());
        out.extend_from_slice(br#"{"specversion":"1.0","id":""#);
        // A hyphenated UUID: nothing to escape.
        let _ = write!(out, "{}", self.id);
        out.extend_from_slice(br#"","type":""#);
        out.extend_from_slice(self.payload.event_type().as_bytes());
        out.extend_from_slice(br#"","source":"#);
        serde_json::to_writer(&mut out, &format_args!("{SOURCE_PREFIX}{}", self.component))
            .map_err(err)?;
        out.extend_from_slice(br#","datacontenttype":"application/json","subject":"#);
        serde_json::to_writer(&mut out, &self.subject).map_err(err)?;
        out.extend_from_slice(br#","time":"#);
        serde_json::to_writer(&mut out, &self.time).map_err(err)?;
        out.extend_from_slice(br#","data":"#);
        self.payload.write_json(&mut out).map_err(err)?;
        // The acting user joins the payload's fields (no payload has a field of that name).
        if out.pop() != Some(b'}') {
            return Err(EncodeError("event data must be a json object".into()));
        }
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(br#""user":"#);
        serde_json::to_writer(&mut out, &self.user).map_err(err)?;
        out.push(b'}');
        if let Some(tp) = &self.traceparent {
            out.extend_from_slice(br#","traceparent":"#);
            serde_json::to_writer(&mut out, tp).map_err(err)?;
        }
        if self.hops > 0 {
            let _ = write!(out, r#","{HOPS}":{}"#, self.hops);
        }
        out.push(b'}');
        Ok(out)
    }

    /// Bytes of the payload's longest free text, to size the body once.
    fn data_len_hint(&self) -> usize {
        match &self.payload {
            Payload::MessagePosted(m) => m.text.len() + 32 * m.mentions.len(),
            Payload::MessageEdited(m) => m.text.len(),
            Payload::NotificationCreated(n) => n.text.len(),
            _ => 0,
        }
    }

    /// Subject, headers and body of the append.
    pub fn encode(&self) -> Result<Encoded, EncodeError> {
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, headers::CLOUDEVENTS_JSON);
        headers.insert(headers::MSG_ID, self.id.to_string().as_str());
        Ok(Encoded {
            subject: self.nats_subject(),
            headers,
            body: Bytes::from(self.to_json()?),
        })
    }

    /// Reads a stored body back.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        // The fast path reads what chatlog writes (JSON `data`) without building a dynamic
        // CloudEvent and a JSON tree first: rebuilding a view decodes every stored event. Anything
        // else (data as a string, base64, a stray attribute form) goes through cloudevents-sdk.
        match Self::decode_direct(body) {
            Ok(event) => Ok(event),
            Err(DecodeError::UnknownType(t)) => Err(DecodeError::UnknownType(t)),
            Err(_) => {
                let event: Event = serde_json::from_slice(body).map_err(DecodeError::Envelope)?;
                Self::from_cloudevent(event)
            }
        }
    }

    fn decode_direct(body: &[u8]) -> Result<Self, DecodeError> {
        use std::borrow::Cow;
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(borrow)]
            specversion: Cow<'a, str>,
            #[serde(borrow)]
            id: Cow<'a, str>,
            #[serde(borrow)]
            source: Cow<'a, str>,
            #[serde(rename = "type", borrow)]
            ty: Cow<'a, str>,
            #[serde(borrow)]
            subject: Option<Cow<'a, str>>,
            time: Option<DateTime<Utc>>,
            #[serde(borrow)]
            data: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            traceparent: Option<String>,
            #[serde(default, rename = "chatloghops")]
            hops: u32,
        }
        #[derive(Deserialize)]
        struct Actor {
            user: UserId,
        }
        let attr = |what: &str| DecodeError::Attribute(what.to_string());
        let wire: Wire = serde_json::from_slice(body).map_err(DecodeError::Envelope)?;
        if wire.specversion != "1.0" {
            return Err(attr("specversion is not 1.0"));
        }
        let id = EventId::parse(&wire.id).map_err(|_| attr("id is not a uuid"))?;
        let component = wire
            .source
            .strip_prefix(SOURCE_PREFIX)
            .ok_or_else(|| attr("source is not /chatlog/<component>"))?
            .to_string();
        let time = wire.time.ok_or_else(|| attr("time is missing"))?;
        let subject = wire
            .subject
            .ok_or_else(|| attr("subject is missing"))?
            .into_owned();
        let data = wire.data.ok_or(DecodeError::NoData)?.get();
        let user = serde_json::from_str::<Actor>(data)
            .map_err(DecodeError::Data)?
            .user;
        let payload = Payload::from_raw(&wire.ty, data)?;
        check_subject(&payload, &subject)?;
        Ok(Self {
            id,
            component,
            subject,
            time,
            user,
            traceparent: wire.traceparent,
            hops: wire.hops,
            payload,
        })
    }

    /// Reads a CloudEvent produced by [`ChatEvent::to_cloudevent`].
    pub fn from_cloudevent(event: Event) -> Result<Self, DecodeError> {
        let attr = |what: &str| DecodeError::Attribute(what.to_string());
        let id = EventId::parse(event.id()).map_err(|_| attr("id is not a uuid"))?;
        let component = event
            .source()
            .as_str()
            .strip_prefix(SOURCE_PREFIX)
            .ok_or_else(|| attr("source is not /chatlog/<component>"))?
            .to_string();
        let time = *event.time().ok_or_else(|| attr("time is missing"))?;
        let subject = event
            .subject()
            .ok_or_else(|| attr("subject is missing"))?
            .to_string();
        let traceparent = event.extension(TRACEPARENT).map(|v| v.to_string());
        let hops = match event.extension(HOPS) {
            Some(cloudevents::event::ExtensionValue::Integer(i)) => {
                u32::try_from(*i).map_err(|_| attr("chatloghops is not a count"))?
            }
            Some(_) => return Err(attr("chatloghops is not a count")),
            None => 0,
        };
        let ty = event.ty().to_string();
        let mut data = match event.data() {
            Some(Data::Json(Value::Object(map))) => map.clone(),
            Some(Data::String(s)) => match serde_json::from_str(s) {
                Ok(Value::Object(map)) => map,
                _ => return Err(DecodeError::NoData),
            },
            Some(Data::Binary(b)) => match serde_json::from_slice(b) {
                Ok(Value::Object(map)) => map,
                _ => return Err(DecodeError::NoData),
            },
            _ => return Err(DecodeError::NoData),
        };
        let user = data
            .remove("user")
            .ok_or_else(|| attr("data.user is missing"))
            .and_then(|u| serde_json::from_value::<UserId>(u).map_err(DecodeError::Data))?;
        let payload = Payload::from_value(&ty, Value::Object(data))?;
        check_subject(&payload, &subject)?;
        Ok(Self {
            id,
            component,
            subject,
            time,
            user,
            traceparent,
            hops,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lobby() -> RoomId {
        RoomId::parse("lobby").unwrap()
    }

    fn ada() -> UserId {
        UserId::parse("ada").unwrap()
    }

    #[test]
    fn encode_sets_subject_and_headers() {
        let ev = ChatEvent::in_room(
            &lobby(),
            ada(),
            "edge",
            Payload::MessagePosted(MessagePosted {
                text: "hi".into(),
                mentions: vec![],
                reply_to: None,
                attachments: Vec::new(),
            }),
        );
        let enc = ev.encode().unwrap();
        assert_eq!(enc.subject, "chat.room.lobby");
        assert_eq!(
            enc.headers.get(headers::MSG_ID).map(|v| v.as_str()),
            Some(ev.id.to_string().as_str())
        );
        assert_eq!(
            enc.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(ChatEvent::decode(&enc.body).unwrap(), ev);
    }

    #[test]
    fn user_events_go_to_the_user_subject() {
        let ev = ChatEvent::for_user(
            &ada(),
            ada(),
            "edge",
            Payload::ReadMarked(ReadMarked {
                room: lobby(),
                seq: 7,
            }),
        );
        assert_eq!(ev.nats_subject(), "chat.user.ada");
        assert_eq!(ev.room(), None);
    }

    #[test]
    fn decode_rejects_what_is_not_a_chatlog_event() {
        assert!(matches!(
            ChatEvent::decode(b"nope"),
            Err(DecodeError::Envelope(_))
        ));
        let unknown = br#"{"specversion":"1.0","id":"0190f7a2-0000-7000-8000-000000000001","source":"/chatlog/edge","type":"chat.future.thing","subject":"lobby","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"user":"ada"}}"#;
        assert!(
            matches!(ChatEvent::decode(unknown), Err(DecodeError::UnknownType(t)) if t == "chat.future.thing")
        );
        let bad_subject = br#"{"specversion":"1.0","id":"0190f7a2-0000-7000-8000-000000000001","source":"/chatlog/edge","type":"chat.typing.started","subject":"a.b","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"user":"ada"}}"#;
        assert!(matches!(
            ChatEvent::decode(bad_subject),
            Err(DecodeError::Attribute(_))
        ));
        let no_user = br#"{"specversion":"1.0","id":"0190f7a2-0000-7000-8000-000000000001","source":"/chatlog/edge","type":"chat.typing.started","subject":"lobby","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{}}"#;
        assert!(ChatEvent::decode(no_user).is_err());
    }
    #[test]
    fn the_type_of_a_body_is_read_without_decoding_it() {
        let event = ChatEvent::in_room(
            &RoomId::parse("lobby").unwrap(),
            UserId::parse("ada").unwrap(),
            "/chatlog/edge",
            Payload::MemberLeft(Membership {
                member: UserId::parse("bob").unwrap(),
            }),
        );
        let body = event.encode().unwrap().body;
        assert_eq!(EventType::of(&body), Some(EventType::MemberLeft));
        // Written by someone else, fields in another order, a "type" nested in data first.
        let other = br#"{"data":{"type":"x","user":"ada"},"type":"chat.typing.started","specversion":"1.0","id":"0190f7a2-0000-7000-8000-000000000001","source":"s","subject":"lobby"}"#;
        assert_eq!(EventType::of(other), Some(EventType::TypingStarted));
        let unknown = br#"{"specversion":"1.0","id":"0190f7a2-0000-7000-8000-000000000001","source":"s","type":"chat.future.thing"}"#;
        assert_eq!(EventType::of(unknown), None);
        assert_eq!(EventType::of(b"not json"), None);
        for ty in Payload::TYPES {
            assert_eq!(EventType::parse(ty).map(EventType::as_str), Some(*ty));
        }
    }
}
