//! Stored room events as they may be served now. The log keeps every text for good (it is
//! append-only and deny-delete); what reaches a client is the message as it is now: a deleted
//! message's `chat.message.posted` and `chat.message.edited` are served with `{"deleted":true}`
//! (and `"moderated":true` when moderation deleted it) in place of their data, and an edited
//! message's events with its latest text.

use serde_json::{Map, Value};

use crate::{EventId, queries::Current};

const POSTED: &str = "chat.message.posted";
const EDITED: &str = "chat.message.edited";

/// The message whose text a stored event carries (its own id for a post, the message edited for
/// an edit); `None` for every other event. Cheap for events that carry no text.
pub fn text_of(body: &[u8]) -> Option<EventId> {
    let carries_text = |ty: &str| body.windows(ty.len()).any(|w| w == ty.as_bytes());
    if !carries_text(POSTED) && !carries_text(EDITED) {
        return None;
    }
    let event: Value = serde_json::from_slice(body).ok()?;
    match event.get("type")?.as_str()? {
        POSTED => EventId::parse(event.get("id")?.as_str()?).ok(),
        EDITED => EventId::parse(event.get("data")?.get("message_id")?.as_str()?).ok(),
        _ => None,
    }
}

/// `body` as it is to be served given the message's state now, or `None` when it is served as
/// stored (the text is the latest, or the body is not a text-carrying event).
pub fn as_now(body: &[u8], now: &Current) -> Option<Vec<u8>> {
    let mut event: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let posted = match event.get("type")?.as_str()? {
        POSTED => true,
        EDITED => false,
        _ => return None,
    };
    if now.deleted {
        let mut data = Map::new();
        data.insert("deleted".into(), Value::Bool(true));
        if now.moderated {
            data.insert("moderated".into(), Value::Bool(true));
        }
        event.insert("data".into(), Value::Object(data));
    } else {
        let data = event.get_mut("data")?.as_object_mut()?;
        if data.get("text").and_then(Value::as_str) == Some(now.text.as_str()) {
            return None;
        }
        data.insert("text".into(), Value::String(now.text.clone()));
        if posted {
            data.insert("edited".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&event).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ChatEvent, Payload, RoomId, UserId,
        event::{MessageEdited, MessagePosted, Reaction},
    };

    fn stored(payload: Payload) -> (EventId, Vec<u8>) {
        let room = RoomId::parse("lobby").unwrap();
        let ada = UserId::parse("ada").unwrap();
        let event = ChatEvent::in_room(&room, ada, "edge", payload);
        (event.id, event.encode().unwrap().body.to_vec())
    }

    fn posted(text: &str) -> Payload {
        Payload::MessagePosted(MessagePosted {
            text: text.into(),
            mentions: vec![UserId::parse("bob").unwrap()],
            reply_to: None,
            attachments: Vec::new(),
        })
    }

    fn now(deleted: bool, text: &str) -> Current {
        Current {
            deleted,
            moderated: false,
            edited: !deleted,
            text: text.into(),
        }
    }

    #[test]
    fn a_deleted_messages_events_are_served_without_their_data() {
        let (id, post) = stored(posted("secret words @bob"));
        assert_eq!(text_of(&post), Some(id));
        let served: Value =
            serde_json::from_slice(&as_now(&post, &now(true, "")).unwrap()).unwrap();
        assert_eq!(served["data"], serde_json::json!({"deleted": true}));
        assert_eq!(served["type"], POSTED);
        assert_eq!(served["id"], id.to_string());
        assert!(!served.to_string().contains("secret"));

        let (_, edit) = stored(Payload::MessageEdited(MessageEdited {
            message_id: id,
            text: "more secret words".into(),
        }));
        assert_eq!(text_of(&edit), Some(id));
        let served = String::from_utf8(as_now(&edit, &now(true, "")).unwrap()).unwrap();
        assert!(!served.contains("secret"), "{served}");
    }

    #[test]
    fn a_message_moderation_deleted_says_so_and_nothing_more() {
        let (_, post) = stored(posted("spam spam"));
        let moderated = Current {
            moderated: true,
            ..now(true, "")
        };
        let served: Value = serde_json::from_slice(&as_now(&post, &moderated).unwrap()).unwrap();
        assert_eq!(
            served["data"],
            serde_json::json!({"deleted": true, "moderated": true})
        );
    }

    #[test]
    fn an_edited_messages_events_carry_the_latest_text() {
        let (id, post) = stored(posted("frist"));
        let served: Value =
            serde_json::from_slice(&as_now(&post, &now(false, "first")).unwrap()).unwrap();
        assert_eq!(served["data"]["text"], "first");
        assert_eq!(served["data"]["edited"], true);
        assert_eq!(served["data"]["mentions"], serde_json::json!(["bob"]));
        let (_, edit) = stored(Payload::MessageEdited(MessageEdited {
            message_id: id,
            text: "firs".into(),
        }));
        let served: Value =
            serde_json::from_slice(&as_now(&edit, &now(false, "first")).unwrap()).unwrap();
        assert_eq!(served["data"]["text"], "first");
        // Already the latest: served as stored.
        assert!(as_now(&post, &now(false, "frist")).is_none());
    }

    #[test]
    fn other_events_carry_no_text_and_are_served_as_stored() {
        let (_, reaction) = stored(Payload::ReactionAdded(Reaction {
            message_id: EventId::new(),
            emoji: "👍".into(),
        }));
        assert_eq!(text_of(&reaction), None);
        assert!(as_now(&reaction, &now(true, "")).is_none());
        assert_eq!(text_of(b"not json chat.message.posted"), None);
    }
}
