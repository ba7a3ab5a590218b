//! What a function answers: the CloudEvents in a 2xx answer's body (binary or structured mode,
//! or a batch), each validated as the edge validates a client's message, into the events to
//! append. Pure: the room's existence is checked by the caller.

use chatlog_events::{
    ChatEvent, Encoded, EventId, Payload, RoomId, UserId,
    event::{MessageDeleted, MessagePosted},
    functions::{FunctionName, FunctionSpec, MAX_HOPS, Source},
    subjects,
};
use cloudevents::{AttributesReader, Data, Event};
use serde::Deserialize;

/// Most events one answer may hold.
pub const MAX_EVENTS: usize = 16;
/// Longest text of an answer, in characters (the edge's default).
pub const MAX_TEXT_CHARS: usize = 4000;

const BATCH: &str = "application/cloudevents-batch+json";

/// The event a function answered, as far as its answers depend on it.
#[derive(Debug, Clone)]
pub struct Answered<'a> {
    pub function: &'a FunctionName,
    pub spec: &'a FunctionSpec,
    /// The answered event's id: answers' ids derive from it.
    pub id: EventId,
    /// The answered event's room, when it is a room's: an answer without `subject` goes there.
    pub room: Option<RoomId>,
    /// The answered event's hop count.
    pub hops: u32,
    /// Users known to hold their names: the answered event's author and those it mentions. An
    /// answer's `@id`s among them are its mentions (so they are notified); others are text.
    pub people: &'a [UserId],
}

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub room: RoomId,
    /// With its hop count (`ChatEvent::hops`).
    pub event: ChatEvent,
}

impl Answer {
    /// The append: the event as the edge would store it.
    pub fn encode(&self) -> Result<Encoded, String> {
        self.event.encode().map_err(|e| e.to_string())
    }
}

/// Why an answer was not stored. Nothing of it is: an answer is stored whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("not a CloudEvent: {0}")]
    NotACloudEvent(String),
    #[error("more than {MAX_EVENTS} events")]
    TooMany,
    #[error("an answer to an event of {0} hops would have more than {MAX_HOPS}")]
    Loop(u32),
    #[error("a function may not send {0:?}")]
    ForbiddenType(String),
    #[error("bad subject: {0}")]
    BadSubject(String),
    #[error("room {0} is not one the function's filter covers")]
    NotCovered(RoomId),
    #[error("the function was not granted moderation of room {0}")]
    NotModerator(RoomId),
    #[error("room {0} does not exist or is private")]
    NoSuchRoom(RoomId),
    #[error("bad data: {0}")]
    BadData(String),
    #[error("text is blank")]
    Blank,
    #[error("text is longer than {MAX_TEXT_CHARS} characters")]
    TooLong,
    #[error("text holds a control character (U+{0:04X})")]
    ControlCharacter(u32),
}

impl Rejection {
    /// A short name, for counting by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::NotACloudEvent(_) => "not_a_cloudevent",
            Rejection::TooMany => "too_many",
            Rejection::Loop(_) => "loop",
            Rejection::ForbiddenType(_) => "forbidden_type",
            Rejection::BadSubject(_) => "bad_subject",
            Rejection::NotCovered(_) => "not_covered",
            Rejection::NotModerator(_) => "not_moderator",
            Rejection::NoSuchRoom(_) => "no_such_room",
            Rejection::BadData(_) => "bad_data",
            Rejection::Blank | Rejection::TooLong | Rejection::ControlCharacter(_) => "bad_text",
        }
    }
}

/// The events of a 2xx answer (`truncated`: the body was cut at the cap). An empty body without
/// `ce-specversion` is no answer.
pub fn parse(
    answered: &Answered,
    headers: &http::HeaderMap,
    body: Vec<u8>,
    cap: usize,
    truncated: bool,
) -> Result<Vec<Answer>, Rejection> {
    if truncated {
        return Err(Rejection::TooLarge(cap));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let events: Vec<Event> = if content_type.starts_with(BATCH) {
        serde_json::from_slice(&body).map_err(|e| Rejection::NotACloudEvent(e.to_string()))?
    } else if body.is_empty() && !headers.contains_key("ce-specversion") {
        return Ok(Vec::new());
    } else {
        vec![
            cloudevents::binding::http::to_event(headers, body)
                .map_err(|e| Rejection::NotACloudEvent(e.to_string()))?,
        ]
    };
    if events.is_empty() {
        return Ok(Vec::new());
    }
    if events.len() > MAX_EVENTS {
        return Err(Rejection::TooMany);
    }
    let hops = answered.hops.saturating_add(1);
    if hops > MAX_HOPS {
        return Err(Rejection::Loop(answered.hops));
    }
    events
        .iter()
        .enumerate()
        .map(|(index, event)| one(answered, event, index, hops))
        .collect()
}

/// The data of a `chat.message.posted` a function sends: what a client's `send` holds.
#[derive(Deserialize)]
struct Post {
    text: String,
    #[serde(default)]
    reply_to: Option<EventId>,
}

/// The data of a `chat.message.deleted` a moderating function sends.
#[derive(Deserialize)]
struct Delete {
    message_id: EventId,
}

/// The types a function may answer with.
const POSTED: &str = "chat.message.posted";
const DELETED: &str = "chat.message.deleted";

fn one(answered: &Answered, event: &Event, index: usize, hops: u32) -> Result<Answer, Rejection> {
    let ty = event.ty();
    if ty != POSTED && ty != DELETED {
        return Err(Rejection::ForbiddenType(ty.to_string()));
    }
    let room = match event.subject() {
        Some(s) => RoomId::parse(s).map_err(|e| Rejection::BadSubject(e.to_string()))?,
        None => answered
            .room
            .clone()
            .ok_or_else(|| Rejection::BadSubject("no subject, and no room answered".into()))?,
    };
    if answered.spec.stream != Source::Rooms || !answered.spec.covers(&subjects::room(&room)) {
        return Err(Rejection::NotCovered(room));
    }
    if let Some(ct) = event.datacontenttype()
        && !(ct.starts_with("application/json") || ct.ends_with("+json"))
    {
        return Err(Rejection::BadData(format!("data of content type {ct:?}")));
    }
    let payload = if ty == DELETED {
        // The view takes a function's delete as a moderator's: only where it was granted.
        if !answered.spec.moderates(&room) {
            return Err(Rejection::NotModerator(room));
        }
        let delete: Delete = data(event)?;
        Payload::MessageDeleted(MessageDeleted {
            message_id: delete.message_id,
        })
    } else {
        let post: Post = data(event)?;
        validate_text(&post.text)?;
        let mentions = chatlog_events::text::mentions(&post.text)
            .into_iter()
            .filter(|u| answered.people.contains(u))
            .collect();
        Payload::MessagePosted(MessagePosted {
            text: post.text,
            mentions,
            reply_to: post.reply_to,
            attachments: Vec::new(),
        })
    };
    let id = EventId::derived(
        &answered.id,
        &format!("{}/{}", answered.function.component(), index),
    );
    let mut event = ChatEvent::in_room(
        &room,
        answered.function.as_user(),
        &answered.function.component(),
        payload,
    )
    .with_id(id);
    event.hops = hops;
    Ok(Answer { room, event })
}

/// An event's data, as JSON of `T` (borrowed when it is JSON already).
pub(crate) fn data<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, Rejection> {
    let bad = |e: serde_json::Error| Rejection::BadData(e.to_string());
    match event.data() {
        Some(Data::Json(v)) => T::deserialize(v).map_err(bad),
        Some(Data::String(s)) => serde_json::from_str(s).map_err(bad),
        Some(Data::Binary(b)) => serde_json::from_slice(b).map_err(bad),
        None => Err(Rejection::BadData("no data".into())),
    }
}

/// The edge's rule for a message's text, at its default limit.
fn validate_text(text: &str) -> Result<(), Rejection> {
    use chatlog_events::text::{TextError, check};
    check(text, MAX_TEXT_CHARS).map_err(|e| match e {
        TextError::Blank => Rejection::Blank,
        TextError::Control(c) => Rejection::ControlCharacter(u32::from(c)),
        TextError::TooLong => Rejection::TooLong,
    })
}

#[cfg(test)]
mod tests {
    use chatlog_events::functions::Source;
    use serde_json::json;

    use super::*;

    fn spec(subject: &str) -> FunctionSpec {
        FunctionSpec {
            url: "http://127.0.0.1:1/".into(),
            secret: "0123456789abcdef".into(),
            stream: Source::Rooms,
            subject: subject.into(),
            types: vec![],
            moderates: vec![],
        }
    }

    struct Given {
        name: FunctionName,
        spec: FunctionSpec,
        hops: u32,
        people: Vec<UserId>,
    }

    impl Given {
        fn new() -> Self {
            Self {
                name: FunctionName::parse("echo").unwrap(),
                spec: spec("chat.room.>"),
                hops: 0,
                people: vec![UserId::parse("ada").unwrap()],
            }
        }

        fn answered(&self) -> Answered<'_> {
            Answered {
                function: &self.name,
                spec: &self.spec,
                id: EventId::parse("0190f7a2-5b1c-7000-8000-000000000001").unwrap(),
                room: Some(RoomId::parse("lobby").unwrap()),
                hops: self.hops,
                people: &self.people,
            }
        }

        fn parse(&self, headers: &[(&str, &str)], body: &[u8]) -> Result<Vec<Answer>, Rejection> {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                map.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            parse(&self.answered(), &map, body.to_vec(), 1 << 20, false)
        }
    }

    fn binary(ty: &str) -> Vec<(&str, &str)> {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "/bot"),
            ("ce-type", ty),
            ("content-type", "application/json"),
        ]
    }

    fn structured(ty: &str, subject: Option<&str>, data: serde_json::Value) -> serde_json::Value {
        let mut e = json!({"specversion":"1.0","id":"x","source":"/bot","type":ty,"data":data});
        if let Some(s) = subject {
            e["subject"] = json!(s);
        }
        e
    }

    #[test]
    fn when_the_answer_is_binary_it_posts_into_the_answered_room_as_the_function() {
        let given = Given::new();
        let answers = given
            .parse(
                &binary("chat.message.posted"),
                br#"{"text":"hi","user":"ada"}"#,
            )
            .unwrap();
        assert_eq!(answers.len(), 1);
        let a = &answers[0];
        assert_eq!((a.room.as_str(), a.event.hops), ("lobby", 1));
        assert_eq!(a.event.user.as_str(), "echo");
        assert_eq!(a.event.component, "function/echo");
        let Payload::MessagePosted(p) = &a.event.payload else {
            panic!("{:?}", a.event.payload)
        };
        assert_eq!(p.text, "hi");
        // Stored once however often it is answered: the id is the answered event's, derived.
        let again = given
            .parse(&binary("chat.message.posted"), br#"{"text":"hi"}"#)
            .unwrap();
        assert_eq!(again[0].event.id, a.event.id);
        let body = a.encode().unwrap().body;
        let stored: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(stored["chatloghops"], 1);
        assert_eq!(stored["source"], "/chatlog/function/echo");
        assert_eq!(ChatEvent::decode(&body).unwrap(), a.event);
    }

    #[test]
    fn when_the_answer_is_structured_or_a_batch_each_event_is_kept_in_order() {
        let given = Given::new();
        let one = structured("chat.message.posted", Some("dev"), json!({"text":"to dev"}));
        let answers = given
            .parse(
                &[("content-type", "application/cloudevents+json")],
                one.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(answers[0].room.as_str(), "dev");
        let batch = json!([
            structured("chat.message.posted", None, json!({"text":"a"})),
            structured("chat.message.posted", None, json!({"text":"b"})),
        ]);
        let answers = given
            .parse(
                &[(
                    "content-type",
                    "application/cloudevents-batch+json; charset=utf-8",
                )],
                batch.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(answers.len(), 2);
        assert_ne!(answers[0].event.id, answers[1].event.id);
        assert_eq!(
            given
                .parse(&[("content-type", BATCH)], b"[]")
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn when_there_is_no_body_there_is_no_answer() {
        let given = Given::new();
        assert_eq!(given.parse(&[], b"").unwrap(), vec![]);
        assert_eq!(
            given.parse(&[("content-type", "text/plain")], b"").unwrap(),
            vec![]
        );
    }

    #[test]
    fn garbage_and_what_is_not_a_cloudevent_are_rejected() {
        let given = Given::new();
        for (headers, body) in [
            (vec![("content-type", "text/plain")], &b"ok"[..]),
            (
                vec![("content-type", "application/json")],
                br#"{"text":"hi"}"#,
            ),
            (
                vec![("content-type", "application/cloudevents+json")],
                b"\xff\x00garbage",
            ),
            (
                vec![("content-type", "application/cloudevents+json")],
                br#"{"text":"hi"}"#,
            ),
            (vec![("content-type", BATCH)], br#"{"not":"a list"}"#),
            (vec![("content-type", BATCH)], br#"[1,2]"#),
            (vec![("ce-specversion", "0.9")], b""),
        ] {
            assert!(
                matches!(
                    given.parse(&headers, body),
                    Err(Rejection::NotACloudEvent(_))
                ),
                "{headers:?} {body:?}"
            );
        }
        assert!(matches!(
            parse(&given.answered(), &http::HeaderMap::new(), vec![], 10, true),
            Err(Rejection::TooLarge(10))
        ));
    }

    #[test]
    fn only_a_message_into_a_covered_room_with_valid_text_is_accepted() {
        let mut given = Given::new();
        let reject =
            |given: &Given, ty: &str, data: &[u8]| given.parse(&binary(ty), data).unwrap_err();
        assert_eq!(
            reject(&given, "chat.room.created", br#"{"name":"x"}"#),
            Rejection::ForbiddenType("chat.room.created".into())
        );
        assert_eq!(
            reject(&given, "chat.message.posted", br#"{"text":"  \n"}"#),
            Rejection::Blank
        );
        assert_eq!(
            reject(&given, "chat.message.posted", br#"{"text":"a\u0007"}"#),
            Rejection::ControlCharacter(7)
        );
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(
            reject(&given, "chat.message.posted", long.as_bytes()),
            Rejection::TooLong
        );
        let fits = format!(r#"{{"text":"{}\n\t"}}"#, "é".repeat(MAX_TEXT_CHARS - 2));
        assert!(
            given
                .parse(&binary("chat.message.posted"), fits.as_bytes())
                .is_ok()
        );
        assert!(matches!(
            reject(&given, "chat.message.posted", br#"{"txt":"hi"}"#),
            Rejection::BadData(_)
        ));
        assert!(matches!(
            reject(
                &given,
                "chat.message.posted",
                br#"{"text":"hi","reply_to":"nope"}"#
            ),
            Rejection::BadData(_)
        ));
        let mut to = binary("chat.message.posted");
        to.push(("ce-subject", "a.b"));
        assert!(matches!(
            given.parse(&to, br#"{"text":"hi"}"#),
            Err(Rejection::BadSubject(_))
        ));
        given.spec = spec("chat.room.lobby");
        let mut to = binary("chat.message.posted");
        to.push(("ce-subject", "dev"));
        assert_eq!(
            given.parse(&to, br#"{"text":"hi"}"#).unwrap_err(),
            Rejection::NotCovered(RoomId::parse("dev").unwrap())
        );
        // A function reading users' events covers no room.
        given.spec.stream = Source::Users;
        given.spec.subject = "chat.user.>".into();
        assert!(matches!(
            reject(&given, "chat.message.posted", br#"{"text":"hi"}"#),
            Rejection::NotCovered(_)
        ));
    }

    #[test]
    fn an_answer_mentions_only_users_the_answered_event_named() {
        let given = Given::new();
        let answers = given
            .parse(
                &binary("chat.message.posted"),
                br#"{"text":"@ada rolled 7; @nobody and @eve are just text"}"#,
            )
            .unwrap();
        let Payload::MessagePosted(p) = &answers[0].event.payload else {
            panic!("{:?}", answers[0].event.payload)
        };
        assert_eq!(p.mentions, vec![UserId::parse("ada").unwrap()]);
    }

    #[test]
    fn a_delete_is_accepted_only_in_a_room_the_function_moderates() {
        let mut given = Given::new();
        let message = "0190f7a2-5b1c-7000-8000-000000000009";
        let body = format!(r#"{{"message_id":"{message}"}}"#);
        let lobby = RoomId::parse("lobby").unwrap();
        assert_eq!(
            given
                .parse(&binary("chat.message.deleted"), body.as_bytes())
                .unwrap_err(),
            Rejection::NotModerator(lobby.clone())
        );
        given.spec.moderates = vec![RoomId::parse("dev").unwrap()];
        assert_eq!(
            given
                .parse(&binary("chat.message.deleted"), body.as_bytes())
                .unwrap_err(),
            Rejection::NotModerator(lobby.clone())
        );
        given.spec.moderates.push(lobby);
        let answers = given
            .parse(&binary("chat.message.deleted"), body.as_bytes())
            .unwrap();
        let Payload::MessageDeleted(d) = &answers[0].event.payload else {
            panic!("{:?}", answers[0].event.payload)
        };
        assert_eq!(d.message_id.to_string(), message);
        assert_eq!(answers[0].event.component, "function/echo");
        assert!(chatlog_events::functions::is_function(
            &answers[0].event.component
        ));
        assert!(matches!(
            given
                .parse(&binary("chat.message.deleted"), br#"{"message_id":"x"}"#)
                .unwrap_err(),
            Rejection::BadData(_)
        ));
        // Granted moderation, a function still edits nothing.
        assert_eq!(
            given
                .parse(
                    &binary("chat.message.edited"),
                    format!(r#"{{"message_id":"{message}","text":"x"}}"#).as_bytes()
                )
                .unwrap_err(),
            Rejection::ForbiddenType("chat.message.edited".into())
        );
    }

    #[test]
    fn a_batch_is_stored_whole_or_not_at_all() {
        let given = Given::new();
        let batch = json!([
            structured("chat.message.posted", None, json!({"text":"fine"})),
            structured("chat.member.joined", None, json!({"member":"ada"})),
        ]);
        assert!(matches!(
            given.parse(&[("content-type", BATCH)], batch.to_string().as_bytes()),
            Err(Rejection::ForbiddenType(_))
        ));
        let many: Vec<_> = (0..=MAX_EVENTS)
            .map(|_| structured("chat.message.posted", None, json!({"text":"x"})))
            .collect();
        assert_eq!(
            given
                .parse(
                    &[("content-type", BATCH)],
                    json!(many).to_string().as_bytes()
                )
                .unwrap_err(),
            Rejection::TooMany
        );
    }

    #[test]
    fn an_answer_beyond_the_hop_limit_is_a_loop() {
        let mut given = Given::new();
        given.hops = MAX_HOPS - 1;
        let ok = given
            .parse(&binary("chat.message.posted"), br#"{"text":"hi"}"#)
            .unwrap();
        assert_eq!(ok[0].event.hops, MAX_HOPS);
        given.hops = MAX_HOPS;
        assert_eq!(
            given
                .parse(&binary("chat.message.posted"), br#"{"text":"hi"}"#)
                .unwrap_err(),
            Rejection::Loop(MAX_HOPS)
        );
    }
}
