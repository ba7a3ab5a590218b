//! Deterministic events for the projections' given/when/then tests.
//!
//! Every builder takes `n`, then `by` (who acts), then the payload's arguments in the order of
//! its fields; a message is named by its event's `n`. Event `n` has the id [`id`]`(n)` and the
//! time [`at`]`(n)`, and is in the lobby, appended by the edge. [`Fixture`] moves one elsewhere:
//! to another room, to a user's subject, to another time.
//!
//! ```
//! use chatlog_test_support::fixtures::{Fixture, created_private, edited, id, posted};
//!
//! let events = [
//!     created_private(1, "ada", &["ada", "bob"]).in_room("secret"),
//!     posted(2, "bob", "helo").in_room("secret"),
//!     edited(3, "bob", 2, "hello").in_room("secret"),
//! ];
//! assert_eq!(events[2].id, id(3));
//! ```

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, UserId,
    event::{
        Empty, Membership, MessageDeleted, MessageEdited, MessagePosted, Presence, Reaction,
        RoomCreated,
    },
};
use chrono::{DateTime, Utc};

/// The room events are in unless moved.
pub const LOBBY: &str = "lobby";

/// The component fixture events are appended by.
pub const COMPONENT: &str = "edge";

pub fn room(name: impl AsRef<str>) -> RoomId {
    RoomId::parse(name.as_ref()).expect("a valid room id")
}

pub fn lobby() -> RoomId {
    room(LOBBY)
}

pub fn user(name: impl AsRef<str>) -> UserId {
    UserId::parse(name.as_ref()).expect("a valid user id")
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(user).collect()
}

/// A room id of the most characters (32), different for each `n`.
pub fn long_room(n: u32) -> RoomId {
    room(format!("{n:0>32}"))
}

/// A user id of the most characters (32), different for each `n`.
pub fn long_user(n: u32) -> UserId {
    user(format!("{n:0>32}"))
}

/// The id of event `n` (a UUIDv7: ids of one test share their first bytes).
pub fn id(n: u32) -> EventId {
    EventId::parse(&format!("0190f7a2-5b1c-7000-8000-{n:012x}")).expect("a valid event id")
}

/// `secs` seconds after a fixed instant (in 2027): the time of event `secs`, unless moved.
pub fn at(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + i64::from(secs), 0).expect("a valid time")
}

/// Event `n` in the lobby, by `by`.
pub fn event(n: u32, by: &str, payload: Payload) -> ChatEvent {
    ChatEvent::in_room(&lobby(), user(by), COMPONENT, payload)
        .with_id(id(n))
        .with_time(at(n))
}

/// A fixture event moved: to another subject, to another time. Its id, author and payload stay.
pub trait Fixture {
    /// The same event in `room`.
    fn in_room(self, room: impl AsRef<str>) -> ChatEvent;
    /// The same event about user `target` (for user payloads: read markers, notifications).
    fn for_user(self, target: &str) -> ChatEvent;
    /// The same event at [`at`]`(secs)`.
    fn at(self, secs: u32) -> ChatEvent;
}

impl Fixture for ChatEvent {
    fn in_room(self, room: impl AsRef<str>) -> ChatEvent {
        ChatEvent::in_room(&self::room(room), self.user, &self.component, self.payload)
            .with_id(self.id)
            .with_time(self.time)
    }

    fn for_user(self, target: &str) -> ChatEvent {
        ChatEvent::for_user(&user(target), self.user, &self.component, self.payload)
            .with_id(self.id)
            .with_time(self.time)
    }

    fn at(self, secs: u32) -> ChatEvent {
        self.with_time(at(secs))
    }
}

/// A public room, "Lobby", created by `by`.
pub fn created(n: u32, by: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::RoomCreated(RoomCreated {
            name: "Lobby".into(),
            topic: String::new(),
            private: false,
            members: vec![],
        }),
    )
}

/// A private room, "Secret", created by `by` with these members.
pub fn created_private(n: u32, by: &str, members: &[&str]) -> ChatEvent {
    event(
        n,
        by,
        Payload::RoomCreated(RoomCreated {
            name: "Secret".into(),
            topic: String::new(),
            private: true,
            members: users(members),
        }),
    )
}

/// `who` joins (adds themselves).
pub fn joined(n: u32, who: &str) -> ChatEvent {
    added(n, who, who)
}

/// `by` adds `member`.
pub fn added(n: u32, by: &str, member: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::MemberJoined(Membership {
            member: user(member),
        }),
    )
}

/// `who` leaves.
pub fn left(n: u32, who: &str) -> ChatEvent {
    removed(n, who, who)
}

/// `by` removes `member`.
pub fn removed(n: u32, by: &str, member: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::MemberLeft(Membership {
            member: user(member),
        }),
    )
}

/// A message mentioning nobody, replying to nothing.
pub fn posted(n: u32, by: &str, text: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::MessagePosted(MessagePosted {
            text: text.into(),
            mentions: vec![],
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
}

/// A message mentioning `mentions`: "hi" and their names.
pub fn mentioning(n: u32, by: &str, mentions: &[&str]) -> ChatEvent {
    event(
        n,
        by,
        Payload::MessagePosted(MessagePosted {
            text: format!("hi {}", mentions.join(" ")),
            mentions: users(mentions),
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
}

/// A message replying to message `to`.
pub fn replied(n: u32, by: &str, to: u32, text: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::MessagePosted(MessagePosted {
            text: text.into(),
            mentions: vec![],
            reply_to: Some(id(to)),
            attachments: Vec::new(),
        }),
    )
}

pub fn edited(n: u32, by: &str, message: u32, text: &str) -> ChatEvent {
    event(
        n,
        by,
        Payload::MessageEdited(MessageEdited {
            message_id: id(message),
            text: text.into(),
        }),
    )
}

pub fn deleted(n: u32, by: &str, message: u32) -> ChatEvent {
    event(
        n,
        by,
        Payload::MessageDeleted(MessageDeleted {
            message_id: id(message),
        }),
    )
}

/// `emoji` added to message `message`, or removed when not `added`.
pub fn reacted(n: u32, by: &str, message: u32, emoji: &str, added: bool) -> ChatEvent {
    let reaction = Reaction {
        message_id: id(message),
        emoji: emoji.into(),
    };
    let payload = if added {
        Payload::ReactionAdded(reaction)
    } else {
        Payload::ReactionRemoved(reaction)
    };
    event(n, by, payload)
}

/// `by`'s connection `connection` comes online.
pub fn online(n: u32, by: &str, connection: &str) -> ChatEvent {
    event(n, by, Payload::PresenceOnline(Presence::of(connection)))
}

/// A heartbeat of `by`'s connection `connection`, naming no other room.
pub fn heartbeat(n: u32, by: &str, connection: &str) -> ChatEvent {
    event(n, by, Payload::PresenceHeartbeat(Presence::of(connection)))
}

/// `by`'s connection `connection` goes offline.
pub fn offline(n: u32, by: &str, connection: &str) -> ChatEvent {
    event(n, by, Payload::PresenceOffline(Presence::of(connection)))
}

/// `by` starts typing, or stops when not `on`.
pub fn typing(n: u32, by: &str, on: bool) -> ChatEvent {
    let payload = if on {
        Payload::TypingStarted(Empty {})
    } else {
        Payload::TypingStopped(Empty {})
    };
    event(n, by, payload)
}
