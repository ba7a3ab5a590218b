//! Requests and answers of the views' NATS services. The edge asks, the handlers answer; both
//! sides use these types, so they are wire format like the events.
//!
//! A view's service is a NATS micro service named after the view, in a queue group, with one
//! endpoint per query on `views.<view>.<query>`: `views.history.messages`, ...

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, RoomId, UserId};

/// `views.<view>.<query>`.
pub fn subject(view: &str, query: &str) -> String {
    format!("views.{view}.{query}")
}

/// The request header that makes a query wait until the view has applied this stream sequence
/// (read-your-writes: ask about what was just appended). The wait is bounded (2 s); the answer
/// may then be older.
pub const MIN_SEQ_HEADER: &str = "Chatlog-Min-Seq";

/// Like [`MIN_SEQ_HEADER`], but strict: when the view has not applied this stream sequence by the
/// end of the same wait, the query is refused with [`NOT_CAUGHT_UP`] instead of answered from an
/// older state (for answers that authorize, such as membership, where stale means wrong).
pub const REQUIRE_SEQ_HEADER: &str = "Chatlog-Require-Seq";

/// The service error code of a query refused under [`REQUIRE_SEQ_HEADER`]: the view is behind,
/// ask again (another replica may be ahead).
pub const NOT_CAUGHT_UP: u16 = 503;

/// Every view answers this query with a [`ChecksumAnswer`].
pub const CHECKSUM: &str = "checksum";

/// The history view's name and queries.
pub mod history {
    pub const VIEW: &str = "history";
    pub const MESSAGES: &str = "messages";
    pub const ROOMS: &str = "rooms";
    pub const ROOM: &str = "room";
    pub const MESSAGE: &str = "message";
    pub const UNREAD: &str = "unread";
    pub const CURRENT: &str = "current";
}

/// What a view says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumAnswer {
    /// A hash of every key and value of the view, hex.
    pub checksum: String,
    /// The last stream sequence applied.
    pub checkpoint: u64,
    /// Messages of the stream not applied yet, as of the last one read.
    pub lag: u64,
}

/// `views.history.messages`: the latest `limit` messages of `room` with seq < `before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub room: RoomId,
    #[serde(default)]
    pub before: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesAnswer {
    /// Oldest first.
    pub messages: Vec<MessageView>,
    /// Whether older messages exist.
    pub has_more: bool,
}

/// A message with its edits, deletion and reactions folded in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub seq: u64,
    pub id: EventId,
    pub room: RoomId,
    pub user: UserId,
    /// Empty once deleted.
    pub text: String,
    pub time: DateTime<Utc>,
    pub reply_to: Option<EventId>,
    pub edited: bool,
    pub deleted: bool,
    /// Emoji to the users who reacted with it, both sorted.
    pub reactions: BTreeMap<String, Vec<UserId>>,
    #[serde(default)]
    pub mentions: Vec<UserId>,
}

/// `views.history.message`: one message by id (`null` when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRequest {
    pub id: EventId,
}

/// `views.history.room`: one room (`null` when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRequest {
    pub room: RoomId,
}

/// `views.history.rooms`: the rooms `user` may see, by id: the first `limit` (default
/// [`DEFAULT_ROOMS`], at most [`MAX_ROOMS`]) with an id after `after`. Answered with a
/// `Vec<RoomView>`; fewer than `limit` means there are no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsRequest {
    pub user: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Rooms a `rooms` query answers when it names no limit.
pub const DEFAULT_ROOMS: usize = 100;
/// Most rooms one `rooms` query answers.
pub const MAX_ROOMS: usize = 500;

/// A room of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    pub topic: String,
    pub private: bool,
    /// Members of a private room (empty for a public one).
    pub members: Vec<UserId>,
    pub creator: UserId,
    /// The seq of the room's last event.
    pub last_seq: u64,
}

impl RoomView {
    /// A public room is visible to all, a private one to its current members only: its creator
    /// is listed at creation, and is out like anyone else once it left or was removed.
    pub fn visible_to(&self, user: &UserId) -> bool {
        !self.private || self.members.contains(user)
    }
}

/// `views.history.current`: the current state of some messages of `room`, by id (at most
/// [`MAX_CURRENT_IDS`]), to serve their stored events as they are now (deleted, or edited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRequest {
    pub room: RoomId,
    pub ids: Vec<EventId>,
}

/// Most ids one `current` query asks about.
pub const MAX_CURRENT_IDS: usize = 1000;

/// Each id asked that is a message of the room; the others are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentAnswer {
    pub messages: BTreeMap<EventId, Current>,
}

/// A message as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub deleted: bool,
    pub edited: bool,
    /// The latest text; empty once deleted.
    pub text: String,
}

/// The presence view's name and queries.
pub mod presence {
    pub const VIEW: &str = "presence";
    pub const ROOM: &str = "room";
}

/// `views.presence.room`: who is online and typing in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRequest {
    pub room: RoomId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceAnswer {
    /// Sorted, each once however many connections it has.
    pub online: Vec<UserId>,
    /// Sorted.
    pub typing: Vec<UserId>,
}

/// The notifications view's name and queries.
pub mod notifications {
    pub const VIEW: &str = "notifications";
    pub const LIST: &str = "list";
    pub const MARKERS: &str = "markers";
    /// The projection of the room log that turns mentions into notifications.
    pub const MENTIONS: &str = "mentions";
}

/// `views.notifications.list`: a user's notifications, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsRequest {
    pub user: UserId,
    #[serde(default)]
    pub unread_only: bool,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsAnswer {
    pub notifications: Vec<NotificationView>,
    /// How many are unread in all.
    pub unread: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    pub id: EventId,
    pub room: RoomId,
    pub seq: u64,
    pub message_id: EventId,
    pub by: UserId,
    pub text: String,
    pub reason: String,
    pub time: DateTime<Utc>,
    pub read: bool,
}

/// `views.notifications.markers`: a user's read markers, room to seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkersRequest {
    pub user: UserId,
}

pub type MarkersAnswer = BTreeMap<RoomId, u64>;

/// `views.history.unread`: per room `user` is a member of, the messages after its marker (all
/// without one), not counting its own or deleted ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadRequest {
    pub user: UserId,
    #[serde(default)]
    pub markers: BTreeMap<RoomId, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadAnswer {
    pub rooms: BTreeMap<RoomId, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn a_rooms_request_of_the_old_form_still_reads() {
        let old: RoomsRequest = serde_json::from_str(r#"{"user":"ada"}"#).unwrap();
        assert_eq!((&old.after, old.limit), (&None, None));
        let paged: RoomsRequest =
            serde_json::from_str(r#"{"user":"ada","after":"lobby","limit":5}"#).unwrap();
        assert_eq!(paged.after.as_ref().map(RoomId::as_str), Some("lobby"));
        assert_eq!(paged.limit, Some(5));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"user":"ada"}"#,
            "nothing new on the wire unless asked"
        );
    }

    #[test]
    fn a_private_room_is_visible_to_its_current_members_only() {
        let mut room = RoomView {
            id: RoomId::parse("secret").unwrap(),
            name: "Secret".into(),
            topic: String::new(),
            private: true,
            members: vec![user("ada"), user("bob")],
            creator: user("ada"),
            last_seq: 1,
        };
        assert!(room.visible_to(&user("ada")) && room.visible_to(&user("bob")));
        assert!(!room.visible_to(&user("eve")));
        room.members.retain(|m| m != &user("ada"));
        assert!(!room.visible_to(&user("ada")), "a creator who left is out");
        room.private = false;
        assert!(
            room.visible_to(&user("eve")),
            "a public room is visible to all"
        );
    }

    #[test]
    fn current_answers_are_keyed_by_message_id() {
        let id = EventId::parse("0190f7a2-5b1c-7000-8000-000000000001").unwrap();
        let answer = CurrentAnswer {
            messages: [(
                id,
                Current {
                    deleted: false,
                    edited: true,
                    text: "hello".into(),
                },
            )]
            .into_iter()
            .collect(),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            r#"{"messages":{"0190f7a2-5b1c-7000-8000-000000000001":{"deleted":false,"edited":true,"text":"hello"}}}"#
        );
        assert_eq!(
            serde_json::from_str::<CurrentAnswer>(&json).unwrap(),
            answer
        );
    }
}
