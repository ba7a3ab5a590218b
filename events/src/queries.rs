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

/// `views.history.rooms`: the rooms `user` may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsRequest {
    pub user: UserId,
}

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
    pub fn visible_to(&self, user: &UserId) -> bool {
        !self.private || &self.creator == user || self.members.contains(user)
    }
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
