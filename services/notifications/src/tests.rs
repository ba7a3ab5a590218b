//! Given / when / then for mentions and notifications.

use chatlog_events::{
    ChatEvent, EventId, Payload,
    event::{NotificationRead, ReadMarked},
    queries::NotificationView,
};
use chatlog_runtime::testing::Memory;
use chatlog_test_support::fixtures::{
    Fixture, added, at, created, created_private, event, id, joined, left, lobby, long_room,
    long_user, mentioning, removed, user,
};

use super::*;

fn run(events: Vec<ChatEvent>) -> Vec<ChatEvent> {
    let mut view = Memory::default();
    let mut emitted = Vec::new();
    for (i, e) in events.iter().enumerate() {
        emitted.extend(view.apply(&Mentions, i as u64 + 1, e));
    }
    emitted
}

fn recipients(emitted: &[ChatEvent]) -> Vec<String> {
    emitted.iter().map(|e| e.subject().to_string()).collect()
}

#[test]
fn a_mention_of_a_member_notifies_them_and_never_the_author() {
    let emitted = run(vec![
        created(1, "ada"),
        joined(2, "bob"),
        mentioning(3, "ada", &["bob", "ada"]),
    ]);
    assert_eq!(recipients(&emitted), ["bob"]);
    let n = &emitted[0];
    assert_eq!(n.nats_subject(), "chat.user.bob");
    assert_eq!(n.id, EventId::derived(&id(3), "bob"), "deterministic id");
    assert_eq!(n.time, at(3), "the time of the message, not the clock");
    let Payload::NotificationCreated(data) = &n.payload else {
        panic!("{n:?}")
    };
    assert_eq!(
        (data.room.as_str(), data.seq, data.message_id),
        ("lobby", 3, id(3))
    );
    assert_eq!((data.by.as_str(), data.reason.as_str()), ("ada", "mention"));
}

#[test]
fn a_mention_of_a_non_member_notifies_nobody() {
    let emitted = run(vec![
        created(1, "ada"),
        mentioning(2, "ada", &["eve"]),
        joined(3, "eve"),
        left(4, "eve"),
        mentioning(5, "ada", &["eve"]),
    ]);
    assert!(emitted.is_empty(), "{emitted:?}");
}

#[test]
fn listed_members_of_a_private_room_are_notified() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada", "bob"]).in_room("secret"),
        mentioning(2, "ada", &["bob", "eve"]).in_room("secret"),
    ]);
    assert_eq!(recipients(&emitted), ["bob"]);
}

#[test]
fn a_replayed_message_notifies_once() {
    let post = mentioning(3, "ada", &["bob"]);
    let emitted = run(vec![
        created(1, "ada"),
        joined(2, "bob"),
        post.clone(),
        post,
    ]);
    assert_eq!(recipients(&emitted), ["bob"]);
}

fn listed(view: &Memory) -> Vec<NotificationView> {
    view.0
        .iter()
        .filter(|(k, _)| k.starts_with(b"n/bob/"))
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect()
}

#[test]
fn notifications_are_kept_and_marked_read() {
    let mentions = run(vec![
        created(1, "ada"),
        joined(2, "bob"),
        mentioning(3, "ada", &["bob"]),
        mentioning(4, "ada", &["bob"]),
        mentioning(5, "ada", &["bob"]),
    ]);
    let mut view = Memory::default();
    for (i, n) in mentions.iter().enumerate() {
        view.apply(&Notifications, i as u64 + 10, n);
    }
    assert_eq!(listed(&view).len(), 3);
    assert!(listed(&view).iter().all(|n| !n.read));
    let first = mentions[0].id;
    view.apply(
        &Notifications,
        20,
        &event(
            20,
            "bob",
            Payload::NotificationRead(NotificationRead {
                ids: vec![first],
                all: false,
            }),
        )
        .for_user("bob"),
    );
    assert_eq!(listed(&view).iter().filter(|n| n.read).count(), 1);
    // Someone else cannot mark bob's notifications read.
    view.apply(
        &Notifications,
        21,
        &event(
            21,
            "eve",
            Payload::NotificationRead(NotificationRead {
                ids: vec![],
                all: true,
            }),
        )
        .for_user("bob"),
    );
    assert_eq!(listed(&view).iter().filter(|n| n.read).count(), 1);
    view.apply(
        &Notifications,
        22,
        &event(
            22,
            "bob",
            Payload::NotificationRead(NotificationRead {
                ids: vec![],
                all: true,
            }),
        )
        .for_user("bob"),
    );
    assert!(listed(&view).iter().all(|n| n.read));
    let unread: Vec<u64> = get_json(&view, b"u/bob").unwrap();
    assert!(unread.is_empty());
}

#[test]
fn a_read_marker_only_moves_forward() {
    let mut view = Memory::default();
    let mark = |n, seq| {
        event(
            n,
            "bob",
            Payload::ReadMarked(ReadMarked { room: lobby(), seq }),
        )
        .for_user("bob")
    };
    view.apply(&Notifications, 1, &mark(1, 40));
    view.apply(&Notifications, 2, &mark(2, 30));
    assert_eq!(view.get(b"r/bob/lobby"), Some(40u64.to_be_bytes().to_vec()));
    view.apply(&Notifications, 3, &mark(3, 50));
    assert_eq!(view.get(b"r/bob/lobby"), Some(50u64.to_be_bytes().to_vec()));
}

#[test]
fn a_removed_member_re_adding_themselves_is_not_notified() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada", "bob"]).in_room("secret"),
        removed(2, "ada", "bob").in_room("secret"),
        added(3, "bob", "bob").in_room("secret"),
        mentioning(4, "ada", &["bob"]).in_room("secret"),
    ]);
    assert!(emitted.is_empty(), "{emitted:?}");
}

#[test]
fn a_non_member_cannot_add_anyone_to_a_private_room() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada"]).in_room("secret"),
        added(2, "eve", "mal").in_room("secret"),
        added(3, "eve", "eve").in_room("secret"),
        mentioning(4, "ada", &["mal", "eve"]).in_room("secret"),
    ]);
    assert!(emitted.is_empty(), "{emitted:?}");
}

#[test]
fn a_member_adds_someone_to_a_private_room() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada", "bob"]).in_room("secret"),
        added(2, "bob", "eve").in_room("secret"),
        mentioning(3, "ada", &["eve"]).in_room("secret"),
    ]);
    assert_eq!(recipients(&emitted), ["eve"]);
}

#[test]
fn only_the_creator_removes_someone_else() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada", "bob", "eve"]).in_room("secret"),
        removed(2, "eve", "bob").in_room("secret"),
        mentioning(3, "ada", &["bob"]).in_room("secret"),
        removed(4, "ada", "bob").in_room("secret"),
        mentioning(5, "ada", &["bob"]).in_room("secret"),
    ]);
    assert_eq!(
        recipients(&emitted),
        ["bob"],
        "notified before the creator removed him"
    );
    assert_eq!(emitted[0].id, EventId::derived(&id(3), "bob"));
}

#[test]
fn in_a_public_room_one_joins_only_oneself() {
    let emitted = run(vec![
        created(1, "ada"),
        added(2, "ada", "bob"),
        mentioning(3, "ada", &["bob"]),
        joined(4, "bob"),
        mentioning(5, "ada", &["bob"]),
    ]);
    assert_eq!(recipients(&emitted), ["bob"]);
    assert_eq!(emitted[0].id, EventId::derived(&id(5), "bob"));
}

#[test]
fn a_second_creation_of_a_room_changes_nothing() {
    let emitted = run(vec![
        created_private(1, "ada", &["ada"]).in_room("secret"),
        created_private(2, "eve", &["eve", "mal"]).in_room("secret"),
        mentioning(3, "ada", &["mal"]).in_room("secret"),
        added(4, "eve", "mal").in_room("secret"),
        mentioning(5, "ada", &["mal"]).in_room("secret"),
    ]);
    assert!(emitted.is_empty(), "{emitted:?}");
}

#[test]
fn membership_of_an_unknown_room_makes_no_member() {
    let emitted = run(vec![
        joined(1, "bob").in_room("nowhere"),
        mentioning(2, "ada", &["bob"]).in_room("nowhere"),
    ]);
    assert!(emitted.is_empty(), "{emitted:?}");
}

// Every answer within MAX_ANSWER_BYTES, whatever is stored.

use chatlog_events::queries::{
    MAX_ANSWER_BYTES, MAX_MARKERS, MarkersAnswer, MarkersRequest, NotificationsAnswer,
    NotificationsRequest, notifications::LIST, notifications::MARKERS,
};
use chatlog_runtime::testing::replay;
use serde::de::DeserializeOwned;

fn sled_view(dir: &tempfile::TempDir) -> View {
    View::open(
        &dir.path().join("v"),
        "notifications",
        Notifications.version(),
    )
    .unwrap()
}

/// Asks `query` as the host does and reads the answer, after checking its size.
fn ask<T: DeserializeOwned>(view: &View, query: &str, request: &impl Serialize) -> T {
    let bytes = Notifications
        .query(view, query, &serde_json::to_vec(request).unwrap())
        .unwrap_or_else(|e| panic!("{query}: {e:?}"));
    assert!(
        bytes.len() <= MAX_ANSWER_BYTES,
        "{query}: an answer of {} bytes",
        bytes.len()
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// The notification `n` for bob: a mention in a message of 4 000 characters of what JSON writes
/// longest (`"`, a 4-byte emoji, a control character: 2, 4 and 6 bytes).
fn notified(n: u32) -> ChatEvent {
    let c = ['"', '🎉', '\u{1}'][n as usize % 3];
    event(
        n,
        "notifications",
        Payload::NotificationCreated(chatlog_events::event::NotificationCreated {
            room: long_room(n),
            seq: u64::from(n),
            message_id: id(100_000 + n),
            by: long_user(n),
            text: std::iter::repeat_n(c, 4000).collect(),
            reason: "mention".into(),
        }),
    )
    .for_user("bob")
}

#[test]
fn pages_of_the_largest_notifications_fit_and_page_on_to_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir);
    // 500 notifications (6 MB of text as JSON), every third read.
    let mut events: Vec<ChatEvent> = (1..=500).map(notified).collect();
    events.push(
        event(
            501,
            "bob",
            Payload::NotificationRead(NotificationRead {
                ids: (1..=500).filter(|n| n % 3 == 0).map(id).collect(),
                all: false,
            }),
        )
        .for_user("bob"),
    );
    let events: Vec<(u64, ChatEvent)> = (1..).zip(events).collect();
    replay(&Notifications, &view, &events, 100);

    for unread_only in [false, true] {
        let mut paged: Vec<NotificationView> = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page: NotificationsAnswer = ask(
                &view,
                LIST,
                &NotificationsRequest {
                    user: user("bob"),
                    unread_only,
                    limit: 500,
                    before,
                },
            );
            pages += 1;
            assert!(!page.notifications.is_empty(), "a page moves on");
            assert_eq!(page.unread, 334);
            before = page.notifications.last().map(|n| n.id);
            paged.extend(page.notifications);
            if !page.has_more {
                break;
            }
        }
        assert!(pages > 5, "cut by bytes: {pages} pages");
        let expected: Vec<EventId> = (1..=500)
            .rev()
            .filter(|n| !unread_only || n % 3 != 0)
            .map(id)
            .collect();
        let ids: Vec<EventId> = paged.iter().map(|n| n.id).collect();
        assert_eq!(
            ids, expected,
            "newest first, each once (unread only: {unread_only})"
        );
        for n in &paged {
            assert_eq!(n.text.chars().count(), 4000, "nothing lost");
            assert_eq!(n.read, n.seq % 3 == 0);
        }
    }

    // A short page says there is more; the last one does not.
    let first: NotificationsAnswer = ask(
        &view,
        LIST,
        &NotificationsRequest {
            user: user("bob"),
            unread_only: false,
            limit: 2,
            before: None,
        },
    );
    assert_eq!(first.notifications.len(), 2);
    assert!(first.has_more);
    let last: NotificationsAnswer = ask(
        &view,
        LIST,
        &NotificationsRequest {
            user: user("bob"),
            unread_only: false,
            limit: 2,
            before: Some(id(3)),
        },
    );
    assert_eq!(
        last.notifications.iter().map(|n| n.id).collect::<Vec<_>>(),
        [id(2), id(1)]
    );
    assert!(!last.has_more);
    let unknown = NotificationsRequest {
        user: user("bob"),
        unread_only: false,
        limit: 2,
        before: Some(id(9999)),
    };
    let refused = Notifications
        .query(&view, LIST, &serde_json::to_vec(&unknown).unwrap())
        .unwrap_err();
    assert_eq!(refused.code(), 400);
    let none = NotificationsRequest {
        before: None,
        limit: 0,
        ..unknown
    };
    let refused = Notifications
        .query(&view, LIST, &serde_json::to_vec(&none).unwrap())
        .unwrap_err();
    assert_eq!(refused.code(), 400, "a page of none would never move on");
}

#[test]
fn markers_answer_the_first_rooms_by_id_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir);
    // Markers in 9 000 rooms of 32-character ids, at the largest seqs.
    let events: Vec<(u64, ChatEvent)> = (0..9000u32)
        .map(|r| {
            let mark = event(
                r + 1,
                "bob",
                Payload::ReadMarked(ReadMarked {
                    room: long_room(8999 - r),
                    seq: u64::MAX - u64::from(r),
                }),
            )
            .for_user("bob");
            (u64::from(r) + 1, mark)
        })
        .collect();
    replay(&Notifications, &view, &events, 1000);
    let markers: MarkersAnswer = ask(&view, MARKERS, &MarkersRequest { user: user("bob") });
    let expected: MarkersAnswer = (0..MAX_MARKERS as u32)
        .map(|r| (long_room(r), u64::MAX - u64::from(8999 - r)))
        .collect();
    assert_eq!(markers, expected);
}
