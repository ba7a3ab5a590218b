//! WebSocket frames (docs/protocol.md §3). A text frame becomes a typed [`ClientFrame`] here, in
//! one place, and every server frame is built here. Ids in frames stay strings until the handler
//! validates them, so a bad id gets a precise `bad_request` rather than a generic parse error.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Join {
        room: String,
        #[serde(default)]
        since: Option<u64>,
        /// Without `since`: start with the room's last `last` messages (at most
        /// [`MAX_LAST`]) rather than at the head.
        #[serde(default)]
        last: Option<u32>,
        #[serde(default)]
        id: Option<String>,
    },
    Leave {
        room: String,
        #[serde(default)]
        id: Option<String>,
    },
    Send {
        room: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        reply_to: Option<String>,
        /// Ids of files the sender uploaded to the room (docs/protocol.md §10).
        #[serde(default)]
        attachments: Vec<String>,
    },
    Edit {
        room: String,
        message_id: String,
        text: String,
        #[serde(default)]
        id: Option<String>,
    },
    Delete {
        room: String,
        message_id: String,
        #[serde(default)]
        id: Option<String>,
    },
    React {
        room: String,
        message_id: String,
        emoji: String,
        #[serde(default)]
        remove: Option<bool>,
        #[serde(default)]
        id: Option<String>,
    },
    Typing {
        room: String,
        active: bool,
        #[serde(default)]
        id: Option<String>,
    },
    Read {
        room: String,
        seq: u64,
        #[serde(default)]
        id: Option<String>,
    },
    /// The rooms the user may see (the line protocol's `ROOMS`).
    Rooms {
        #[serde(default)]
        id: Option<String>,
    },
    /// Who is online and typing in a room the user may see (the line protocol's `WHO`).
    Who {
        room: String,
        #[serde(default)]
        id: Option<String>,
    },
    Ping,
}

/// The most messages a join may start with (`last`).
pub const MAX_LAST: u32 = 200;

/// A frame that could not be parsed, with the client's `id` when one could be read, so the
/// `error` frame can name the request it answers.
#[derive(Debug)]
pub struct ParseError {
    pub id: Option<String>,
    pub error: ApiError,
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| {
            #[derive(Deserialize)]
            struct IdOnly {
                id: Option<String>,
            }
            let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id);
            let message = if e.is_syntax() || e.is_eof() {
                "malformed json".to_string()
            } else {
                // serde's own words: "unknown variant `x`", "missing field `room`", ...
                format!("bad frame: {e}")
            };
            ParseError {
                id,
                error: ApiError::bad_request(message),
            }
        })
    }
}

/// Server frames other than `event` (which is built once per room event by the fan-out).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Joined {
        room: &'a str,
        head: u64,
    },
    Left {
        room: &'a str,
    },
    Ack {
        id: &'a str,
        seq: u64,
    },
    Pong,
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: crate::error::Code,
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    pub fn to_text(&self) -> Utf8Bytes {
        // Serializing these plain structs cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// `{"type":"error",...}` for `error`, naming the request `id` when there is one.
pub fn error_frame(id: Option<&str>, error: &ApiError) -> Utf8Bytes {
    ServerFrame::Error {
        id,
        code: error.code,
        message: &error.message,
    }
    .to_text()
}

/// `{"type":"event","room":R,"seq":N,"event":{...}}`, with the stored CloudEvent embedded as
/// it is. `None` when the stored body is not JSON (it did not come from chatlog).
pub fn event_frame(room: &str, seq: u64, body: &[u8]) -> Option<Utf8Bytes> {
    #[derive(Serialize)]
    struct EventFrame<'a> {
        r#type: &'static str,
        room: &'a str,
        seq: u64,
        event: &'a RawValue,
    }
    let body = std::str::from_utf8(body).ok()?;
    let event: &RawValue = serde_json::from_str(body).ok()?;
    let frame = EventFrame {
        r#type: "event",
        room,
        seq,
        event,
    };
    serde_json::to_string(&frame).ok().map(Utf8Bytes::from)
}

/// `{"type":"presence","room":R,"online":[...],"typing":[...]}`.
pub fn presence_frame(room: &str, presence: &chatlog_events::queries::PresenceAnswer) -> Utf8Bytes {
    presence_like("presence", room, presence)
}

fn presence_like(
    kind: &'static str,
    room: &str,
    presence: &chatlog_events::queries::PresenceAnswer,
) -> Utf8Bytes {
    #[derive(Serialize)]
    struct PresenceFrame<'a> {
        r#type: &'static str,
        room: &'a str,
        online: &'a [chatlog_events::UserId],
        typing: &'a [chatlog_events::UserId],
    }
    let frame = PresenceFrame {
        r#type: kind,
        room,
        online: &presence.online,
        typing: &presence.typing,
    };
    Utf8Bytes::from(serde_json::to_string(&frame).unwrap_or_default())
}

/// `{"type":"rooms","rooms":[...]}`: the answer to `rooms`, each room as `GET /api/rooms` lists it.
pub fn rooms_frame(rooms: &[impl Serialize]) -> Utf8Bytes {
    #[derive(Serialize)]
    struct RoomsFrame<'a, R> {
        r#type: &'static str,
        rooms: &'a [R],
    }
    let frame = RoomsFrame {
        r#type: "rooms",
        rooms,
    };
    Utf8Bytes::from(serde_json::to_string(&frame).unwrap_or_default())
}

/// `{"type":"who","room":R,"online":[...],"typing":[...]}`: the answer to `who`.
pub fn who_frame(room: &str, presence: &chatlog_events::queries::PresenceAnswer) -> Utf8Bytes {
    presence_like("who", room, presence)
}

/// `{"type":"notification","event":{...}}` with the stored CloudEvent embedded as it is.
pub fn notification_frame(body: &[u8]) -> Option<Utf8Bytes> {
    #[derive(Serialize)]
    struct NotificationFrame<'a> {
        r#type: &'static str,
        event: &'a RawValue,
    }
    let body = std::str::from_utf8(body).ok()?;
    let event: &RawValue = serde_json::from_str(body).ok()?;
    let frame = NotificationFrame {
        r#type: "notification",
        event,
    };
    serde_json::to_string(&frame).ok().map(Utf8Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn it_parses_every_client_frame() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"join","room":"lobby","since":3}"#).unwrap(),
            ClientFrame::Join {
                room: "lobby".into(),
                since: Some(3),
                last: None,
                id: None,
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"send","room":"a","text":"hi","id":"x"}"#).unwrap(),
            ClientFrame::Send { .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"react","room":"a","message_id":"m","emoji":"x"}"#)
                .unwrap(),
            ClientFrame::React { remove: None, .. }
        ));
    }

    #[test]
    fn bad_frames_are_bad_requests_naming_their_id() {
        for bad in [
            "not json",
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"room":"a"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":"a","since":-1}"#,
            r#"{"type":"send","room":"a","text":5}"#,
        ] {
            let err = ClientFrame::parse(bad).unwrap_err();
            assert_eq!(err.error.code, Code::BadRequest, "{bad}");
        }
        let err =
            ClientFrame::parse(r#"{"type":"send","room":"a","text":[],"id":"abc"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("abc"));
    }

    #[test]
    fn event_frames_embed_the_stored_json() {
        let frame = event_frame("lobby", 7, br#"{"id":"x"}"#).unwrap();
        assert_eq!(
            frame.as_str(),
            r#"{"type":"event","room":"lobby","seq":7,"event":{"id":"x"}}"#
        );
        assert!(event_frame("lobby", 7, b"not json").is_none());
    }
}
