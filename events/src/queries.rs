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

/// The most bytes a view's answer may serialize to.
///
/// NATS drops a reply larger than the server's `max_payload`, and a query whose answer grew past
/// it would answer "unavailable" for good; half of the default leaves room for headers and a
/// server configured lower. Pages are cut and say how to ask on, lists that cannot be paged are
/// capped, and one item is bounded by the stream's largest event (`max_msg_size`).
pub const MAX_ANSWER_BYTES: usize = 512 * 1024;

/// The length of `value`'s JSON, as `serde_json::to_vec` writes it, without writing it.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting cannot fail, and the views' types always serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

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

/// `views.history.messages`: the latest `limit` messages of `room` with seq < `before`, fewer when
/// they would not fit in [`MAX_ANSWER_BYTES`] (never none while there is one: a message alone
/// always fits, see [`MessageView`]). `has_more` says whether to ask on, with `before` = the
/// oldest seq answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub room: RoomId,
    #[serde(default)]
    pub before: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagesAnswer {
    /// Oldest first.
    pub messages: Vec<MessageView>,
    /// Whether older messages exist (the page may be shorter than `limit`: cut by bytes).
    pub has_more: bool,
}

/// A message with its edits, deletion and reactions folded in.
///
/// As a view answers it, its reactions are capped: at most [`MAX_REACTION_USERS`] users listed
/// per emoji (the whole count in `reaction_counts`), the most reacted emoji first while the
/// reactions' JSON fits in [`MAX_REACTIONS_BYTES`] (the others left out). So a message answered is
/// bounded whatever is stored: its text and mentions come from stored events, each at most the
/// stream's `max_msg_size`, and its reactions are capped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Deleted by a function the operator granted moderation of the room, not by its author.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
    /// Emoji to the users who reacted with it, both sorted (in an answer, at most
    /// [`MAX_REACTION_USERS`] of them per emoji: the first by id).
    pub reactions: BTreeMap<String, Vec<UserId>>,
    #[serde(default)]
    pub mentions: Vec<UserId>,
    /// The files it carries (none once deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::event::Attachment>,
    /// For each emoji whose `reactions` list was cut, how many users reacted with it in all.
    /// Absent when none was cut, and never stored (the view keeps every reaction).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reaction_counts: BTreeMap<String, usize>,
}

/// Most users a message's answer lists per emoji.
pub const MAX_REACTION_USERS: usize = 50;
/// Most bytes of a message's `reactions` and `reaction_counts` JSON in an answer: reactions have
/// no bound of their own (every user may add every emoji), so a message's answer caps them.
pub const MAX_REACTIONS_BYTES: usize = 64 * 1024;

/// `views.history.message`: one message by id (`null` when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRequest {
    pub id: EventId,
}

/// `views.history.room`: one room (`null` when unknown), a [`RoomView`].
///
/// Its `members`: with `members` asked, those of the users named who are members now (in the
/// room's order), enough to decide on them and bounded however large the room; without, every
/// member, refused (400) when the answer would pass [`MAX_ANSWER_BYTES`] (a room's members have
/// no bound: joins and additions only add).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRequest {
    pub room: RoomId,
    /// The users whose membership the answer tells (at most [`MAX_MEMBERS_ASKED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<UserId>>,
}

/// Most users one `room` query asks about (a post's mentions and its author fit).
pub const MAX_MEMBERS_ASKED: usize = 100;

/// `views.history.rooms`: the rooms `user` may see, by id: the first `limit` (default
/// [`DEFAULT_ROOMS`], at most [`MAX_ROOMS`]) with an id after `after`, fewer when they would not
/// fit in [`MAX_ANSWER_BYTES`] (never none while there is one). Answered with a [`RoomsAnswer`]:
/// a page shorter than `limit` is not the end, `has_more` is.
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

/// The answer of `views.history.rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsAnswer {
    /// By id.
    pub rooms: Vec<ListedRoom>,
    /// Whether `user` may see more rooms after the last one answered: ask on with `after` = its
    /// id.
    pub has_more: bool,
}

/// A room as the directory lists it: a [`RoomView`] (its fields inline in the JSON) whose
/// `members` are those of a private room only, at most [`MAX_LISTED_MEMBERS`] of them (the first
/// to have become members, and the user asking when it is one), and how many members it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRoom {
    #[serde(flatten)]
    pub room: RoomView,
    /// Members of the room, all of them: a public room's those who joined it and did not leave.
    pub member_count: usize,
}

/// Most members a [`ListedRoom`] lists (as many as a private room is created with, at most).
pub const MAX_LISTED_MEMBERS: usize = 1000;

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
///
/// The ids are answered in the order asked, as long as the answer fits in [`MAX_ANSWER_BYTES`]
/// (a thousand of the longest texts do not). With `partial`, the answer then stops and its
/// `next` is the index in `ids` of the first id not answered (ask again from there); without, such
/// a request is refused (400): an asker that does not read `next` would take the ids not answered
/// for messages of another room, and serve their stored text as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRequest {
    pub room: RoomId,
    pub ids: Vec<EventId>,
    /// Whether the asker reads [`CurrentAnswer::next`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// Most ids one `current` query asks about.
pub const MAX_CURRENT_IDS: usize = 1000;

/// Each id asked (up to `next`) that is a message of the room; the others are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentAnswer {
    pub messages: BTreeMap<EventId, Current>,
    /// The index in the request's `ids` of the first id not answered (only for a `partial`
    /// request cut at [`MAX_ANSWER_BYTES`]); absent when every id was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

/// A message as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub deleted: bool,
    /// Deleted by moderation (see [`MessageView::moderated`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `views.notifications.list`: a user's notifications, newest first: the first `limit` (one at
/// least) older than `before`, fewer when they would not fit in [`MAX_ANSWER_BYTES`] (never none
/// while there is one: a notification alone is bounded by the stream's largest event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsRequest {
    pub user: UserId,
    #[serde(default)]
    pub unread_only: bool,
    pub limit: usize,
    /// Only notifications older than this one: the id of the last (oldest) of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<EventId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationsAnswer {
    pub notifications: Vec<NotificationView>,
    /// How many are unread in all.
    pub unread: usize,
    /// Whether older notifications (unread ones, with `unread_only`) exist: ask on with `before`
    /// = the id of the last one answered. The page may be shorter than `limit` (cut by bytes).
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `views.notifications.markers`: a user's read markers, room to seq: those of the first
/// [`MAX_MARKERS`] rooms by id (so that the answer fits [`MAX_ANSWER_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkersRequest {
    pub user: UserId,
}

pub type MarkersAnswer = BTreeMap<RoomId, u64>;

/// Most read markers a `markers` query answers: far more than the rooms `unread` counts
/// ([`MAX_UNREAD_ROOMS`]), so those rooms' markers are answered but in extreme cases.
pub const MAX_MARKERS: usize = 8192;

/// `views.history.unread`: per room `user` is a member of, the messages after its marker (all
/// without one), not counting its own or deleted ones: the first [`MAX_UNREAD_ROOMS`] such rooms
/// by id (the others are absent), each counted up to the history view's `MAX_UNREAD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadRequest {
    pub user: UserId,
    #[serde(default)]
    pub markers: BTreeMap<RoomId, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnreadAnswer {
    pub rooms: BTreeMap<RoomId, u64>,
}

/// Most rooms an `unread` query counts: bounds its answer and its work (it reads each room's
/// blocks back to the marker).
pub const MAX_UNREAD_ROOMS: usize = 1000;

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
                    moderated: false,
                    edited: true,
                    text: "hello".into(),
                },
            )]
            .into_iter()
            .collect(),
            next: None,
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

    #[test]
    fn json_len_is_the_length_serde_json_writes() {
        let room = RoomView {
            id: RoomId::parse("lobby").unwrap(),
            name: "\"quoted\" \\ and 🎉".into(),
            topic: "line\u{1}".into(),
            private: true,
            members: vec![user("ada")],
            creator: user("ada"),
            last_seq: 7,
        };
        assert_eq!(json_len(&room), serde_json::to_vec(&room).unwrap().len());
        assert_eq!(json_len(&Vec::<u8>::new()), 2);
    }

    #[test]
    fn a_listed_room_is_a_room_view_with_its_member_count() {
        let listed = ListedRoom {
            room: RoomView {
                id: RoomId::parse("lobby").unwrap(),
                name: "Lobby".into(),
                topic: String::new(),
                private: false,
                members: vec![],
                creator: user("ada"),
                last_seq: 3,
            },
            member_count: 2,
        };
        let answer = RoomsAnswer {
            rooms: vec![listed],
            has_more: true,
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            r#"{"rooms":[{"id":"lobby","name":"Lobby","topic":"","private":false,"members":[],"creator":"ada","last_seq":3,"member_count":2}],"has_more":true}"#
        );
        assert_eq!(serde_json::from_str::<RoomsAnswer>(&json).unwrap(), answer);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let as_view: RoomView = serde_json::from_value(value["rooms"][0].clone()).unwrap();
        assert_eq!(as_view, answer.rooms[0].room, "a RoomView reader reads it");
    }

    #[test]
    fn the_new_fields_are_absent_from_the_old_forms_and_default_when_absent() {
        let room = RoomId::parse("lobby").unwrap();
        let asked = RoomRequest {
            room: room.clone(),
            members: None,
        };
        assert_eq!(
            serde_json::to_string(&asked).unwrap(),
            r#"{"room":"lobby"}"#
        );
        let current = CurrentRequest {
            room,
            ids: vec![],
            partial: false,
        };
        assert_eq!(
            serde_json::to_string(&current).unwrap(),
            r#"{"room":"lobby","ids":[]}"#
        );
        let old: NotificationsAnswer =
            serde_json::from_str(r#"{"notifications":[],"unread":0}"#).unwrap();
        assert!(!old.has_more);
        let request: NotificationsRequest =
            serde_json::from_str(r#"{"user":"ada","limit":5}"#).unwrap();
        assert_eq!(request.before, None);
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"user":"ada","unread_only":false,"limit":5}"#
        );
        let message = r#"{"seq":1,"id":"0190f7a2-5b1c-7000-8000-000000000001","room":"lobby","user":"ada","text":"hi","time":"2027-01-15T08:00:00Z","reply_to":null,"edited":false,"deleted":false,"reactions":{},"mentions":[]}"#;
        let read: MessageView = serde_json::from_str(message).unwrap();
        assert!(read.reaction_counts.is_empty());
        assert_eq!(
            serde_json::to_string(&read).unwrap(),
            message,
            "a message whose reactions were not cut is written as before"
        );
    }
}
