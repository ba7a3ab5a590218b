//! NATS subjects. Every builder takes a validated id, so a user string cannot reach a subject
//! without passing [`crate::ids`] first.

use crate::ids::{RoomId, UserId};

/// Everything that happens in a room, stored in `CHAT_ROOMS`.
pub fn room(room: &RoomId) -> String {
    format!("chat.room.{room}")
}

/// The republished live copy of [`room`], carrying `Nats-Sequence` and `Nats-Last-Sequence`.
pub fn live_room(room: &RoomId) -> String {
    format!("live.room.{room}")
}

/// Presence and typing of a room, stored in `CHAT_PRESENCE`.
pub fn presence(room: &RoomId) -> String {
    format!("chat.presence.{room}")
}

/// The live copy of [`presence`].
pub fn live_presence(room: &RoomId) -> String {
    format!("live.presence.{room}")
}

/// Per-user events (read markers, notifications), stored in `CHAT_USERS`.
pub fn user(user: &UserId) -> String {
    format!("chat.user.{user}")
}

/// The live copy of [`user`].
pub fn live_user(user: &UserId) -> String {
    format!("live.user.{user}")
}

/// Every user's live copy (one subscription for an edge's users).
pub fn live_users() -> &'static str {
    "live.user.*"
}

/// Account registration, stored in `CHAT_ACCOUNTS` (no live copy).
pub fn account(user: &UserId) -> String {
    format!("chat.account.{user}")
}

/// Headers the log uses.
pub mod headers {
    /// Deduplication id of an append: the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Stored messages are structured-mode CloudEvents.
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
    /// Set by RePublish: the stream sequence of this message.
    pub const SEQUENCE: &str = "Nats-Sequence";
    /// Set by RePublish: the previous sequence on the same subject (0 for the first).
    pub const LAST_SEQUENCE: &str = "Nats-Last-Sequence";
    /// Optimistic concurrency: the append is refused unless the subject's last sequence is this.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_protocol() {
        let r = RoomId::parse("lobby").unwrap();
        let u = UserId::parse("ada").unwrap();
        assert_eq!(room(&r), "chat.room.lobby");
        assert_eq!(live_room(&r), "live.room.lobby");
        assert_eq!(presence(&r), "chat.presence.lobby");
        assert_eq!(live_presence(&r), "live.presence.lobby");
        assert_eq!(user(&u), "chat.user.ada");
        assert_eq!(live_user(&u), "live.user.ada");
        assert_eq!(account(&u), "chat.account.ada");
    }
}
