//! Given / when / then for the history projection, and its properties.

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, UserId,
    event::{Membership, MessagePosted, RoomCreated, RoomUpdated},
    queries::{MessageView, MessagesRequest, RoomView},
};
use chatlog_runtime::{
    Projection, View,
    testing::{Memory, replay},
};
use chatlog_test_support::fixtures::{
    Fixture, added, at, created, created_private, deleted, edited, event, id, joined, left, lobby,
    long_room, long_user, posted, reacted, removed, room, user,
};
use proptest::prelude::*;

use super::*;

/// given(events) . when(event) . then(view): events get seq = their position, starting at 1.
struct Given {
    view: Memory,
    next_seq: u64,
}

fn given(events: impl IntoIterator<Item = ChatEvent>) -> Given {
    let mut g = Given {
        view: Memory::default(),
        next_seq: 1,
    };
    for e in events {
        g.apply(e);
    }
    g
}

impl Given {
    fn apply(&mut self, e: ChatEvent) {
        self.view.apply(&History, self.next_seq, &e);
        self.next_seq += 1;
    }

    fn when(mut self, e: ChatEvent) -> Self {
        self.apply(e);
        self
    }

    /// The message `seq` of the lobby, from the block that holds it.
    fn message(&self, seq: u64) -> Option<MessageView> {
        let (_, block) = self
            .view
            .0
            .range(message_key(&lobby(), 0)..=message_key(&lobby(), seq))
            .next_back()?;
        find_in_block(block, seq).map(|(_, m)| m)
    }

    fn room(&self) -> Option<RoomView> {
        room_view(&self.view, &lobby())
    }
}

#[test]
fn it_keeps_a_posted_message() {
    let then = given([created(1, "ada")]).when(posted(2, "ada", "hello"));
    let m = then.message(2).expect("message at seq 2");
    assert_eq!(
        (m.text.as_str(), m.user.as_str(), m.id),
        ("hello", "ada", id(2))
    );
    assert!(!m.edited && !m.deleted && m.reactions.is_empty());
    assert_eq!(m.time, at(2));
    assert_eq!(then.room().unwrap().last_seq, 2);
}

#[test]
fn it_folds_an_edit_into_the_message() {
    let then =
        given([created(1, "ada"), posted(2, "ada", "helo")]).when(edited(3, "ada", 2, "hello"));
    let m = then.message(2).unwrap();
    assert_eq!(m.text, "hello");
    assert!(m.edited);
    assert_eq!(then.room().unwrap().last_seq, 3);
}

#[test]
fn it_ignores_an_edit_by_someone_else() {
    let then =
        given([created(1, "ada"), posted(2, "ada", "mine")]).when(edited(3, "eve", 2, "hacked"));
    assert_eq!(then.message(2).unwrap().text, "mine");
}

#[test]
fn a_delete_leaves_a_tombstone_without_text() {
    let then = given([
        created(1, "ada"),
        posted(2, "ada", "oops"),
        reacted(3, "bob", 2, "👍", true),
    ])
    .when(deleted(4, "ada", 2));
    let m = then.message(2).unwrap();
    assert!(m.deleted);
    assert_eq!(m.text, "");
    assert!(m.reactions.is_empty());
}

#[test]
fn an_edit_of_a_deleted_message_changes_nothing() {
    let then = given([
        created(1, "ada"),
        posted(2, "ada", "x"),
        deleted(3, "ada", 2),
    ])
    .when(edited(4, "ada", 2, "back from the dead"));
    let m = then.message(2).unwrap();
    assert!(m.deleted && m.text.is_empty() && !m.edited);
}

#[test]
fn an_edit_that_arrives_before_its_message_is_ignored() {
    let then =
        given([created(1, "ada"), edited(2, "ada", 3, "early")]).when(posted(3, "ada", "original"));
    let m = then.message(3).unwrap();
    assert_eq!(m.text, "original");
    assert!(!m.edited);
}

#[test]
fn a_reaction_added_twice_counts_once() {
    let then = given([
        created(1, "ada"),
        posted(2, "ada", "x"),
        reacted(3, "bob", 2, "👍", true),
    ])
    .when(reacted(4, "bob", 2, "👍", true));
    assert_eq!(then.message(2).unwrap().reactions["👍"], vec![user("bob")]);
}

#[test]
fn a_removed_reaction_disappears() {
    let then = given([
        created(1, "ada"),
        posted(2, "ada", "x"),
        reacted(3, "bob", 2, "👍", true),
        reacted(4, "eve", 2, "👍", true),
    ])
    .when(reacted(5, "bob", 2, "👍", false));
    assert_eq!(then.message(2).unwrap().reactions["👍"], vec![user("eve")]);
    let then = then.when(reacted(6, "eve", 2, "👍", false));
    assert!(then.message(2).unwrap().reactions.is_empty());
}

#[test]
fn a_duplicate_event_id_is_applied_once() {
    let post = posted(2, "ada", "once");
    let then = given([created(1, "ada"), post.clone()]).when(post);
    assert!(then.message(2).is_some());
    assert!(
        then.message(3).is_none(),
        "the duplicate at seq 3 was not stored"
    );
    let edit = edited(4, "ada", 2, "edited");
    let then = then
        .when(edit.clone())
        .when(edited(5, "ada", 2, "again"))
        .when(edit);
    assert_eq!(
        then.message(2).unwrap().text,
        "again",
        "a replayed old edit does not win"
    );
}

#[test]
fn ids_past_a_full_index_group_are_found_and_applied_once() {
    // Every id here shares its first 6 bytes: one index group, full after GROUP_MAX entries.
    let past = u32::try_from(index::GROUP_MAX).unwrap() + 20;
    let mut then = given([created(1, "ada")]);
    for n in 2..=past {
        then.apply(posted(n, "ada", &format!("m{n}")));
    }
    let early = 2;
    let spilled = past - 5;
    assert!(
        then.view.0.keys().any(|k| k.starts_with(b"j/")),
        "the entries past the group's size have keys of their own"
    );
    // Duplicates of an early and of a spilled message: not stored again.
    let then = then
        .when(posted(early, "ada", "again"))
        .when(posted(spilled, "ada", "again"));
    for seq in [u64::from(past) + 1, u64::from(past) + 2] {
        assert!(then.message(seq).is_none(), "duplicate stored at {seq}");
    }
    // Both are found by id: edits land, and the message query answers.
    let n = past + 3;
    let then = then
        .when(edited(n, "ada", early, "early, edited"))
        .when(edited(n + 1, "ada", spilled, "spilled, edited"));
    assert_eq!(
        then.message(u64::from(early)).unwrap().text,
        "early, edited"
    );
    assert_eq!(
        then.message(u64::from(spilled)).unwrap().text,
        "spilled, edited"
    );
    let (_, found) = find_message(&then.view, &id(spilled)).expect("found by id");
    assert_eq!(found.message.seq, u64::from(spilled));
    assert!(find_message(&then.view, &id(past + 100)).is_none());
}

#[test]
fn it_keeps_the_room_directory() {
    let secret = event(
        1,
        "ada",
        Payload::RoomCreated(RoomCreated {
            name: "Secret".into(),
            topic: "t".into(),
            private: true,
            members: vec![user("ada")],
        }),
    );
    let then = given([secret]).when(added(2, "ada", "bob")).when(event(
        3,
        "ada",
        Payload::RoomUpdated(RoomUpdated {
            name: Some("Hush".into()),
            topic: None,
        }),
    ));
    let room = then.room().unwrap();
    assert_eq!(room.name, "Hush");
    assert_eq!(room.topic, "t");
    assert_eq!(room.members, vec![user("ada"), user("bob")]);
    assert!(room.visible_to(&user("bob")) && !room.visible_to(&user("eve")));
    let then = then.when(removed(4, "ada", "bob"));
    assert!(!then.room().unwrap().visible_to(&user("bob")));
    assert_eq!(then.room().unwrap().last_seq, 4);
}

fn sled_view(dir: &tempfile::TempDir, name: &str) -> View {
    View::open(&dir.path().join(name), "history", History.version()).unwrap()
}

#[test]
fn pages_have_the_right_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    let mut events = vec![(1, created(1, "ada"))];
    for n in 2..=11 {
        events.push((u64::from(n), posted(n, "ada", &format!("m{n}"))));
    }
    replay(&History, &view, &events, 3);
    let page = |before, limit| {
        messages(
            &view,
            MessagesRequest {
                room: lobby(),
                before,
                limit,
            },
        )
        .unwrap()
    };
    let seqs = |a: &MessagesAnswer| a.messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    let latest = page(None, 4);
    assert_eq!(
        seqs(&latest),
        vec![8, 9, 10, 11],
        "the latest, oldest first"
    );
    assert!(latest.has_more);
    let older = page(Some(8), 4);
    assert_eq!(seqs(&older), vec![4, 5, 6, 7]);
    assert!(older.has_more);
    let oldest = page(Some(4), 4);
    assert_eq!(seqs(&oldest), vec![2, 3]);
    assert!(!oldest.has_more);
    let exact = page(Some(6), 4);
    assert_eq!(seqs(&exact), vec![2, 3, 4, 5]);
    assert!(!exact.has_more, "nothing older than seq 2");
    assert_eq!(seqs(&page(None, 200)).len(), 10);
    assert!(page(Some(2), 10).messages.is_empty());
    assert!(
        messages(
            &view,
            MessagesRequest {
                room: lobby(),
                before: None,
                limit: 0
            }
        )
        .is_err()
    );
    assert!(
        messages(
            &view,
            MessagesRequest {
                room: lobby(),
                before: None,
                limit: 201
            }
        )
        .is_err()
    );
    let other = room("lobby2");
    assert!(
        messages(
            &view,
            MessagesRequest {
                room: other,
                before: None,
                limit: 5
            }
        )
        .unwrap()
        .messages
        .is_empty()
    );
}

/// A random history of a room: posts, edits, deletes, reactions by three users, with repeats.
fn history_strategy() -> impl Strategy<Value = Vec<(u64, ChatEvent)>> {
    let action = (0u8..6, 0usize..3, 0usize..8, 0usize..2);
    proptest::collection::vec(action, 1..60).prop_map(|actions| {
        let users = ["ada", "bob", "eve"];
        let mut events = vec![created(1, "ada")];
        let mut n = 1;
        for (kind, who, target, emoji) in actions {
            n += 1;
            let by = users[who];
            let target = (target as u32 % n.max(2)).max(2);
            let e = match kind {
                0 | 1 => posted(n, by, &format!("text {n}")),
                2 => edited(n, by, target, &format!("edit {n}")),
                3 => deleted(n, by, target),
                4 => reacted(n, by, target, ["👍", "🎉"][emoji], emoji == 0),
                _ => events[(target as usize) % events.len()].clone(), // a duplicate
            };
            events.push(e);
        }
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_prefix_then_the_rest_equals_all_at_once(events in history_strategy(), cut in 0usize..60, batch in 1usize..8) {
        let dir = tempfile::tempdir().unwrap();
        let all = sled_view(&dir, "all");
        replay(&History, &all, &events, 1000);
        let parts = sled_view(&dir, "parts");
        let cut = cut.min(events.len());
        replay(&History, &parts, &events[..cut], batch);
        replay(&History, &parts, &events[cut..], batch);
        prop_assert_eq!(all.checksum().unwrap(), parts.checksum().unwrap());
    }

    #[test]
    fn applying_twice_equals_once(events in history_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let once = sled_view(&dir, "once");
        replay(&History, &once, &events, 5);
        // The same events again under new seqs, as a replayed stream would store duplicates.
        let offset = events.len() as u64;
        let again: Vec<_> = events.iter().map(|(s, e)| (s + offset, e.clone())).collect();
        let twice = sled_view(&dir, "twice");
        replay(&History, &twice, &events, 5);
        replay(&History, &twice, &again, 5);
        let read = |v: &View| -> Vec<MessageView> {
            messages(v, MessagesRequest { room: lobby(), before: None, limit: 200 }).unwrap().messages
        };
        prop_assert_eq!(read(&once), read(&twice));
    }
}

#[test]
fn unread_counts_others_messages_after_the_marker() {
    use chatlog_events::queries::UnreadRequest;
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    let events = vec![
        (1, created(1, "ada")),
        (2, joined(2, "bob")),
        (3, posted(3, "ada", "one")),
        (4, posted(4, "ada", "two")),
        (5, posted(5, "bob", "mine")),
        (6, posted(6, "ada", "three")),
        (7, deleted(7, "ada", 6)),
    ];
    replay(&History, &view, &events, 2);
    let count = |who: &str, marker: Option<u64>| {
        let mut markers = std::collections::BTreeMap::new();
        if let Some(m) = marker {
            markers.insert(lobby(), m);
        }
        unread(
            &view,
            UnreadRequest {
                user: user(who),
                markers,
            },
        )
        .unwrap()
        .rooms
    };
    assert_eq!(
        count("bob", None).get(&lobby()),
        Some(&2),
        "not his own, not the deleted one"
    );
    assert_eq!(count("bob", Some(3)).get(&lobby()), Some(&1));
    assert_eq!(count("bob", Some(7)).get(&lobby()), Some(&0));
    assert!(count("eve", None).is_empty(), "eve never joined");
}

#[test]
fn messages_over_many_blocks_page_count_and_change_as_one_list() {
    use chatlog_events::queries::{MessageRequest, UnreadRequest};
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    let side = room("side");
    let mut events = vec![(1, created(1, "ada")), (2, joined(2, "bob"))];
    // 70 lobby messages (several blocks), another room's between them: sparse seqs.
    let mut lobby_seqs = Vec::new();
    let mut n = 3;
    for i in 0..70 {
        let by = if i % 3 == 0 { "bob" } else { "ada" };
        events.push((u64::from(n), posted(n, by, &format!("m{i}"))));
        lobby_seqs.push(u64::from(n));
        n += 1;
        if i % 2 == 0 {
            let aside = posted(n, "bob", &format!("s{i}")).in_room(&side);
            events.push((u64::from(n), aside));
            n += 1;
        }
    }
    // Changes to messages in the first block, after it closed.
    let [m0, m1, m4] = [lobby_seqs[0], lobby_seqs[1], lobby_seqs[4]].map(|s| s as u32);
    events.push((u64::from(n), edited(n, "bob", m0, "m0, edited")));
    events.push((u64::from(n + 1), deleted(n + 1, "ada", m1)));
    events.push((u64::from(n + 2), reacted(n + 2, "ada", m4, "👍", true)));
    replay(&History, &view, &events, 7);

    // Paging back with a page size that is not the block size gives every message once.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = messages(
            &view,
            MessagesRequest {
                room: lobby(),
                before,
                limit: 9,
            },
        )
        .unwrap();
        paged.splice(0..0, page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
        before = page.messages.first().map(|m| m.seq);
    }
    assert_eq!(paged, lobby_seqs);

    let all = messages(
        &view,
        MessagesRequest {
            room: lobby(),
            before: None,
            limit: 200,
        },
    )
    .unwrap()
    .messages;
    assert_eq!(all[0].text, "m0, edited");
    assert!(all[0].edited);
    assert!(all[1].deleted && all[1].text.is_empty());
    assert_eq!(all[4].reactions.get("👍"), Some(&vec![user("ada")]));

    // One message by id, from its block.
    let asked = History
        .query(
            &view,
            chatlog_events::queries::history::MESSAGE,
            &serde_json::to_vec(&MessageRequest { id: id(m4) }).unwrap(),
        )
        .unwrap();
    let found: Option<MessageView> = serde_json::from_slice(&asked).unwrap();
    assert_eq!(found.map(|m| m.seq), Some(lobby_seqs[4]));

    // Unread for bob with the marker anywhere: the others' messages after it, not deleted.
    for marker in std::iter::once(0).chain(lobby_seqs.iter().copied()) {
        let expected = all
            .iter()
            .filter(|m| m.seq > marker && m.user != user("bob") && !m.deleted)
            .count() as u64;
        let counted = unread(
            &view,
            UnreadRequest {
                user: user("bob"),
                markers: [(lobby(), marker)].into_iter().collect(),
            },
        )
        .unwrap()
        .rooms;
        assert_eq!(counted.get(&lobby()), Some(&expected), "marker {marker}");
    }
}

impl Given {
    fn members(&self) -> Vec<UserId> {
        self.room().expect("the room").members
    }
}

#[test]
fn a_removed_member_re_adding_themselves_is_ignored() {
    let then = given([
        created_private(1, "ada", &["ada", "bob"]),
        removed(2, "ada", "bob"),
    ])
    .when(joined(3, "bob"));
    assert_eq!(then.members(), vec![user("ada")]);
    assert!(!then.room().unwrap().visible_to(&user("bob")));
    assert_eq!(then.room().unwrap().last_seq, 3, "seen all the same");
    assert!(
        find_message(&then.view, &id(3)).is_none() && index::find(&then.view, &id(3)).is_some(),
        "its id is recorded as applied"
    );
}

#[test]
fn a_non_member_adding_someone_to_a_private_room_is_ignored() {
    let then = given([created_private(1, "ada", &["ada"])]).when(added(2, "eve", "mal"));
    assert_eq!(then.members(), vec![user("ada")]);
    let then = then.when(joined(3, "eve"));
    assert_eq!(then.members(), vec![user("ada")]);
}

#[test]
fn a_non_creator_removing_someone_else_is_ignored() {
    let then =
        given([created_private(1, "ada", &["ada", "bob", "eve"])]).when(removed(2, "eve", "bob"));
    assert_eq!(then.members(), vec![user("ada"), user("bob"), user("eve")]);
}

#[test]
fn a_creator_who_left_removes_nobody() {
    let then = given([created_private(1, "ada", &["ada", "bob"]), left(2, "ada")])
        .when(removed(3, "ada", "bob"));
    assert_eq!(then.members(), vec![user("bob")]);
    assert!(!then.room().unwrap().visible_to(&user("ada")));
}

#[test]
fn a_member_leaving_themselves_is_out() {
    let then = given([created_private(1, "ada", &["ada", "bob"])]).when(left(2, "bob"));
    assert_eq!(then.members(), vec![user("ada")]);
    assert!(!then.room().unwrap().visible_to(&user("bob")));
}

#[test]
fn the_creator_removes_a_member() {
    let then = given([created_private(1, "ada", &["ada", "bob"])]).when(removed(2, "ada", "bob"));
    assert_eq!(then.members(), vec![user("ada")]);
}

#[test]
fn anyone_joins_a_public_room_themselves_and_only_themselves() {
    let then = given([created(1, "ada")]).when(joined(2, "bob"));
    assert_eq!(then.members(), vec![user("bob")]);
    let then = then.when(added(3, "ada", "eve"));
    assert_eq!(
        then.members(),
        vec![user("bob")],
        "no one adds someone else"
    );
}

#[test]
fn membership_of_an_unknown_room_is_ignored() {
    let then = given([]).when(joined(1, "bob"));
    assert!(then.room().is_none());
}

#[test]
fn current_answers_the_messages_of_the_room_as_they_are_now() {
    use chatlog_events::queries::{Current, CurrentAnswer, CurrentRequest, history::CURRENT};
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    let aside = posted(6, "ada", "elsewhere").in_room("side");
    let events = [
        created(1, "ada"),
        posted(2, "ada", "plain"),
        posted(3, "ada", "helo"),
        posted(4, "ada", "oops"),
        edited(5, "ada", 3, "hello"),
        aside,
        deleted(7, "ada", 4),
    ];
    let events: Vec<_> = (1..).zip(events).collect();
    replay(&History, &view, &events, 3);
    let ask = |ids: Vec<EventId>| {
        let request = serde_json::to_vec(&CurrentRequest {
            room: lobby(),
            ids,
            partial: false,
        })
        .unwrap();
        History.query(&view, CURRENT, &request)
    };
    let asked = ask(vec![id(2), id(3), id(4), id(5), id(6), id(99)]).unwrap();
    let answer: CurrentAnswer = serde_json::from_slice(&asked).unwrap();
    let current = |deleted, edited, text: &str| Current {
        deleted,
        moderated: false,
        edited,
        text: text.into(),
    };
    let expected = [
        (id(2), current(false, false, "plain")),
        (id(3), current(false, true, "hello")),
        (id(4), current(true, false, "")),
    ];
    assert_eq!(
        answer.messages,
        expected.into_iter().collect(),
        "an edit, a message of another room and an unknown id are absent"
    );
    assert!(ask(vec![]).is_ok());
    let too_many = ask(vec![id(2); 1001]).unwrap_err();
    assert_eq!(too_many.code(), 400);
    assert!(ask(vec![id(2); 1000]).is_ok());
}

#[test]
fn rooms_page_by_id_and_show_only_what_the_user_may_see() {
    use chatlog_events::queries::{RoomsRequest, history::ROOMS};
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    // Rooms r00 .. r09, created out of order; the odd ones private to ada.
    let events: Vec<_> = [3, 7, 0, 9, 1, 4, 8, 2, 6, 5]
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let n = i as u32 + 1;
            let e = if r % 2 == 1 {
                created_private(n, "ada", &["ada"])
            } else {
                created(n, "ada")
            };
            (u64::from(n), e.in_room(format!("r{r:02}")))
        })
        .collect();
    replay(&History, &view, &events, 4);
    let ask = |body: serde_json::Value| {
        History
            .query(&view, ROOMS, &serde_json::to_vec(&body).unwrap())
            .map(|a| {
                let answer = serde_json::from_slice::<RoomsAnswer>(&a).unwrap();
                let ids = answer
                    .rooms
                    .into_iter()
                    .map(|r| r.room.id.to_string())
                    .collect::<Vec<_>>();
                (ids, answer.has_more)
            })
    };
    let all: Vec<String> = (0..10).map(|r| format!("r{r:02}")).collect();
    assert_eq!(
        ask(serde_json::json!({"user": "ada"})).unwrap(),
        (all.clone(), false),
        "the old form"
    );
    assert_eq!(
        ask(serde_json::json!({"user": "bob"})).unwrap().0,
        ["r00", "r02", "r04", "r06", "r08"]
    );
    // Page by 3 after the last id seen: every room once, in order.
    let mut paged = Vec::new();
    let mut after: Option<RoomId> = None;
    loop {
        let request = RoomsRequest {
            user: user("ada"),
            after: after.clone(),
            limit: Some(3),
        };
        let (page, has_more) = ask(serde_json::to_value(&request).unwrap()).unwrap();
        paged.extend(page.iter().cloned());
        if !has_more {
            break;
        }
        after = page.last().map(|r| RoomId::parse(r.as_str()).unwrap());
    }
    assert_eq!(paged, all);
    assert_eq!(
        ask(serde_json::json!({"user": "ada", "after": "r06", "limit": 3})).unwrap(),
        (vec!["r07".into(), "r08".into(), "r09".into()], false),
        "a full last page says there is no more"
    );
    assert_eq!(
        ask(serde_json::json!({"user": "bob", "after": "r04", "limit": 2})).unwrap(),
        (vec!["r06".into(), "r08".into()], false),
        "rooms bob may not see are not more"
    );
    // A page counts only visible rooms; `after` need not be a room.
    assert_eq!(
        ask(serde_json::json!({"user": "bob", "after": "r01", "limit": 2})).unwrap(),
        (vec!["r02".into(), "r04".into()], true)
    );
    assert_eq!(
        ask(serde_json::json!({"user": "bob", "after": "r099", "limit": 500})).unwrap(),
        (Vec::<String>::new(), false)
    );
    for limit in [0, 501] {
        let refused = ask(serde_json::json!({"user": "ada", "limit": limit})).unwrap_err();
        assert_eq!(refused.code(), 400, "limit {limit}");
    }
}

// Every answer within MAX_ANSWER_BYTES, whatever is stored: the worst content the edge's limits
// allow (texts of 4 000 characters that JSON escapes or encodes longest, 100-character names,
// 1 000-character topics, 1 000 members listed, 64-byte reactions by many users), and some it
// refuses now but an older edge stored (control characters, 6 bytes each as `\u0001`).

use chatlog_events::queries::{
    CurrentAnswer, CurrentRequest, MAX_ANSWER_BYTES, MAX_LISTED_MEMBERS, MAX_REACTION_USERS,
    MAX_REACTIONS_BYTES, MAX_UNREAD_ROOMS, RoomRequest, RoomsAnswer, RoomsRequest, UnreadRequest,
    json_len,
};
use serde::de::DeserializeOwned;

/// Asks `query` as the host does and reads the answer, after checking its size.
fn ask<T: DeserializeOwned>(view: &View, query: &str, request: &impl serde::Serialize) -> T {
    let bytes = History
        .query(view, query, &serde_json::to_vec(request).unwrap())
        .unwrap_or_else(|e| panic!("{query}: {e:?}"));
    assert!(
        bytes.len() <= MAX_ANSWER_BYTES,
        "{query}: an answer of {} bytes",
        bytes.len()
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// 4 000 characters (the edge's most) of what JSON writes longest: `"` and `\` (2 bytes each),
/// a 4-byte emoji, a control character (6 bytes: stored by an older edge).
fn worst_text(n: u32) -> String {
    let c = ['"', '🎉', '\\', '\u{1}'][n as usize % 4];
    std::iter::repeat_n(c, 4000).collect()
}

/// Ada's message `n`, mentioning the edge's most: 50 users, of 32 characters.
fn posted_worst(n: u32, text: String) -> ChatEvent {
    event(
        n,
        "ada",
        Payload::MessagePosted(MessagePosted {
            text,
            mentions: (0..50).map(long_user).collect(),
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
}

#[test]
fn pages_of_the_largest_messages_fit_and_page_on_to_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    // 200 messages of 4 000 characters: 1.6 MB of `"`, 3.2 MB of emoji, 4.8 MB of controls.
    let mut events = vec![(1, created(1, "ada"))];
    let mut expected = Vec::new();
    for n in 2..=201 {
        events.push((u64::from(n), posted_worst(n, worst_text(n))));
        expected.push((u64::from(n), worst_text(n)));
    }
    // Some edited to another of the longest texts, some deleted.
    for (i, n) in (202..=221).enumerate() {
        let target = 2 + 10 * i as u32;
        if i % 2 == 0 {
            events.push((
                u64::from(n),
                edited(n, "ada", target, &worst_text(target + 1)),
            ));
            expected[target as usize - 2].1 = worst_text(target + 1);
        } else {
            events.push((u64::from(n), deleted(n, "ada", target)));
            expected[target as usize - 2].1 = String::new();
        }
    }
    replay(&History, &view, &events, 50);

    // Given/when/then: paging back with the most a page may ask for, every answer fits, and
    // reaches every message once, as stored.
    let mut paged: Vec<MessageView> = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page: MessagesAnswer = ask(
            &view,
            history::MESSAGES,
            &MessagesRequest {
                room: lobby(),
                before,
                limit: MAX_PAGE,
            },
        );
        pages += 1;
        assert!(!page.messages.is_empty(), "a page moves on");
        assert!(
            page.messages.windows(2).all(|w| w[0].seq < w[1].seq),
            "oldest first"
        );
        before = page.messages.first().map(|m| m.seq);
        paged.splice(0..0, page.messages);
        if !page.has_more {
            break;
        }
    }
    assert!(pages > 5, "cut by bytes: {pages} pages");
    let got: Vec<(u64, String)> = paged.iter().map(|m| (m.seq, m.text.clone())).collect();
    assert_eq!(got, expected, "every message once, nothing lost");
    assert!(paged.iter().all(|m| m.deleted || m.mentions.len() == 50));
}

/// Rewrites the stored lobby message `seq` with `change` (a state no sequence of events could
/// build quickly: the projection rewrites a message's block per reaction).
fn rewrite_stored(view: &View, seq: u64, change: impl FnOnce(&mut MessageView)) {
    let (key, block) = view
        .tree()
        .range(message_key(&lobby(), 0)..=message_key(&lobby(), seq))
        .next_back()
        .unwrap()
        .unwrap();
    let (index, mut message) = find_in_block(&block, seq).unwrap();
    change(&mut message);
    view.tree()
        .insert(key.clone(), replace_in_block(&block, index, &message))
        .unwrap();
}

#[test]
fn a_message_answered_carries_capped_reactions_and_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    let mut events = vec![(1, created(1, "ada"))];
    for n in 2..=4 {
        events.push((u64::from(n), posted_worst(n, worst_text(n))));
    }
    replay(&History, &view, &events, 10);
    // Given messages with every reaction anyone may add: 20 000 users' 👍, and 3 000 emoji of
    // 64 bytes that JSON escapes to 128 (by two users each), and one forged emoji of 60 000 bytes;
    // over a megabyte of reactions each.
    let many: Vec<UserId> = (0..20_000).map(long_user).collect();
    let emoji = |k: u32| format!("{k:04}{}", "\"".repeat(60));
    for seq in 2..=4 {
        rewrite_stored(&view, seq, |m| {
            m.reactions.insert("👍".into(), many.clone());
            for k in 0..3000 {
                m.reactions.insert(emoji(k), vec![user("bob"), user("eve")]);
            }
            m.reactions.insert("x".repeat(60_000), vec![user("mal")]);
        });
    }
    assert!(
        view.tree()
            .get(message_key(&lobby(), 2))
            .unwrap()
            .unwrap()
            .len()
            > 3_000_000
    );
    // When one more reacts, through the projection.
    replay(&History, &view, &[(5, reacted(5, "zed", 3, "👍", true))], 1);

    // Then the page and each message answered fit, with the count of every emoji cut.
    let page: MessagesAnswer = ask(
        &view,
        history::MESSAGES,
        &MessagesRequest {
            room: lobby(),
            before: None,
            limit: MAX_PAGE,
        },
    );
    assert_eq!(page.messages.len(), 3);
    for m in &page.messages {
        let total = if m.seq == 3 { 20_001 } else { 20_000 };
        assert_eq!(m.reactions["👍"].len(), MAX_REACTION_USERS);
        assert_eq!(m.reactions["👍"][0], long_user(0), "the first by id");
        assert_eq!(m.reaction_counts.get("👍"), Some(&total));
        assert!(json_len(&m.reactions) + json_len(&m.reaction_counts) <= MAX_REACTIONS_BYTES);
        assert!(!m.reactions.contains_key(&"x".repeat(60_000)));
        let kept: Vec<_> = m.reactions.keys().filter(|e| e.len() == 64).collect();
        assert!(
            kept.len() > 200,
            "as many of the others as fit: {}",
            kept.len()
        );
        assert!(
            m.reactions.values().all(|u| u.len() <= MAX_REACTION_USERS),
            "no list over the cap"
        );
        let one: Option<MessageView> = ask(
            &view,
            history::MESSAGE,
            &chatlog_events::queries::MessageRequest {
                id: id(m.seq as u32),
            },
        );
        assert_eq!(one.as_ref(), Some(m), "the same message by id");
    }
    // And the view keeps every reaction.
    let (_, stored) = find_message(&view, &id(3)).unwrap();
    assert_eq!(stored.message.reactions["👍"].len(), 20_001);
    assert_eq!(stored.message.reactions.len(), 3002);
    assert!(stored.message.reaction_counts.is_empty());
}

/// Ada's room of the longest name and topic: a 100-character name of `"` or emoji, a
/// 1 000-character topic of controls (6 bytes each).
fn create_room(n: u32, room: &RoomId, private: bool, members: Vec<UserId>) -> ChatEvent {
    let name = if n % 2 == 0 { "\"" } else { "🎉" }.repeat(100);
    let topic = "\u{1}".repeat(1000);
    event(
        n,
        "ada",
        Payload::RoomCreated(RoomCreated {
            name,
            topic,
            private,
            members,
        }),
    )
    .in_room(room)
}

#[test]
fn the_room_directory_pages_by_bytes_and_lists_members_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    // 600 rooms (0 .. 599) of the longest names and topics; every 10th private with 1 000
    // members listed (bob the last), the 5th of those private to others only.
    let listed_members = |r: u32| -> Vec<UserId> {
        let mut members: Vec<UserId> = (0..999).map(|u| long_user(r * 1000 + u)).collect();
        members.insert(0, user("ada"));
        if r != 50 {
            members[999] = user("bob");
        }
        members
    };
    let mut events = Vec::new();
    let mut n = 0;
    for r in 0..600 {
        n += 1;
        let private = r % 10 == 0;
        let members = if private { listed_members(r) } else { vec![] };
        events.push((
            u64::from(n),
            create_room(n, &long_room(r), private, members),
        ));
    }
    // Room 10 grows to 1 500 members by additions; bob, added last, is past the first 1 000.
    let grown = long_room(10);
    n += 1;
    events.push((u64::from(n), left(n, "bob").in_room(&grown)));
    for k in 0..501 {
        n += 1;
        let member = if k == 500 {
            user("bob")
        } else {
            long_user(900_000 + k)
        };
        let add = added(n, "ada", member.as_str()).in_room(&grown);
        events.push((u64::from(n), add));
    }
    replay(&History, &view, &events, 100);
    // Room 21, public, joined by 50 000 users (written directly: each join rewrites the entry).
    let big = long_room(21);
    let mut entry: RoomView = get_json(&view, &room_key(&big)).unwrap();
    entry.members = (0..50_000).map(long_user).collect();
    view.tree()
        .insert(room_key(&big), serde_json::to_vec(&entry).unwrap())
        .unwrap();

    // Bob pages through with the most a page may ask for, and with the default.
    let visible: Vec<RoomId> = (0..600).filter(|r| *r != 50).map(long_room).collect();
    for limit in [MAX_ROOMS, DEFAULT_ROOMS] {
        let mut paged: Vec<ListedRoom> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            pages += 1;
            let page: RoomsAnswer = ask(
                &view,
                history::ROOMS,
                &RoomsRequest {
                    user: user("bob"),
                    after: after.clone(),
                    limit: Some(limit),
                },
            );
            assert!(!page.rooms.is_empty() && page.rooms.len() <= limit);
            after = page.rooms.last().map(|r| r.room.id.clone());
            paged.extend(page.rooms);
            if !page.has_more {
                break;
            }
        }
        // 540 public rooms of ~6.5 KB, 59 private ones of ~42 KB: ~6 MB in all.
        assert!(pages > 10, "cut by bytes: {pages} pages of {limit}");
        let ids: Vec<RoomId> = paged.iter().map(|r| r.room.id.clone()).collect();
        assert_eq!(
            ids, visible,
            "every room bob may see once, by id (limit {limit})"
        );
        for listed in &paged {
            let r: u32 = listed.room.id.as_str().parse().unwrap();
            let room = &listed.room;
            assert_eq!(room.name.chars().count(), 100);
            assert_eq!(room.topic, "\u{1}".repeat(1000));
            let count = match r {
                10 => 1500,
                21 => 50_000,
                r if r % 10 == 0 => 1000,
                _ => 0,
            };
            assert_eq!(listed.member_count, count, "room {r}");
            if room.private {
                assert_eq!(room.members.len(), count.min(MAX_LISTED_MEMBERS));
                assert!(room.members.contains(&user("bob")), "the asker is listed");
                assert!(room.visible_to(&user("bob")));
            } else {
                assert!(
                    room.members.is_empty(),
                    "room {r}: a public room lists none"
                );
            }
        }
    }

    // One room: all its members while they fit; for a room too large, the members asked about.
    let private: Option<RoomView> = ask(
        &view,
        history::ROOM,
        &RoomRequest {
            room: long_room(30),
            members: None,
        },
    );
    assert_eq!(private.unwrap().members, listed_members(30));
    let asked = RoomRequest {
        room: big.clone(),
        members: None,
    };
    let refused = History
        .query(&view, history::ROOM, &serde_json::to_vec(&asked).unwrap())
        .unwrap_err();
    assert_eq!(refused.code(), 400);
    let about = vec![user("bob"), long_user(49_999), long_user(7), user("eve")];
    let found: Option<RoomView> = ask(
        &view,
        history::ROOM,
        &RoomRequest {
            room: big.clone(),
            members: Some(about),
        },
    );
    let found = found.unwrap();
    assert_eq!(found.members, vec![long_user(7), long_user(49_999)]);
    assert!(membership::allowed(
        Some(&found),
        &long_user(7),
        &Payload::MemberLeft(Membership {
            member: long_user(7)
        })
    ));
    let too_many = RoomRequest {
        room: big,
        members: Some((0..101).map(long_user).collect()),
    };
    let refused = History
        .query(
            &view,
            history::ROOM,
            &serde_json::to_vec(&too_many).unwrap(),
        )
        .unwrap_err();
    assert_eq!(refused.code(), 400);
}

#[test]
fn unread_counts_the_first_rooms_by_id_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    // bob joined 1 100 rooms of 32-character ids, with a message by ada in each.
    let mut events = Vec::new();
    for r in 0..1100 {
        let (room, n) = (long_room(r), 3 * r);
        events.extend([
            created(n + 1, "ada").in_room(&room),
            joined(n + 2, "bob").in_room(&room),
            posted(n + 3, "ada", "hi").in_room(&room),
        ]);
    }
    let events: Vec<_> = (1..).zip(events).collect();
    replay(&History, &view, &events, 500);
    let answer: UnreadAnswer = ask(
        &view,
        history::UNREAD,
        &UnreadRequest {
            user: user("bob"),
            markers: (0..1100).map(|r| (long_room(r), 1)).collect(),
        },
    );
    let expected: BTreeMap<RoomId, u64> = (0..MAX_UNREAD_ROOMS as u32)
        .map(|r| (long_room(r), 1))
        .collect();
    assert_eq!(answer.rooms, expected);
}

#[test]
fn current_pages_the_largest_texts_and_refuses_an_asker_that_would_not() {
    let dir = tempfile::tempdir().unwrap();
    let view = sled_view(&dir, "v");
    // 200 messages of 4 000 controls (24 KB each as JSON: 4.8 MB), some edited, some deleted.
    let control = "\u{1}".repeat(4000);
    let mut events = vec![(1, created(1, "ada"))];
    for n in 2..=201 {
        events.push((u64::from(n), posted(n, "ada", &control)));
    }
    for (i, n) in (202..=221).enumerate() {
        let target = 2 + 10 * i as u32;
        let e = if i % 2 == 0 {
            edited(n, "ada", target, &"\"".repeat(4000))
        } else {
            deleted(n, "ada", target)
        };
        events.push((u64::from(n), e));
    }
    replay(&History, &view, &events, 50);
    // Asked in an order of their own, with an unknown id and a repeat among them.
    let mut ids: Vec<EventId> = (2..=201).rev().map(id).collect();
    ids.insert(50, id(999));
    ids.insert(120, id(7));

    let refused = History
        .query(
            &view,
            history::CURRENT,
            &serde_json::to_vec(&CurrentRequest {
                room: lobby(),
                ids: ids.clone(),
                partial: false,
            })
            .unwrap(),
        )
        .unwrap_err();
    assert_eq!(
        refused.code(),
        400,
        "not cut for an asker that would not page"
    );

    let mut answered = BTreeMap::new();
    let mut from = 0;
    let mut asks = 0;
    loop {
        let answer: CurrentAnswer = ask(
            &view,
            history::CURRENT,
            &CurrentRequest {
                room: lobby(),
                ids: ids[from..].to_vec(),
                partial: true,
            },
        );
        asks += 1;
        for (at, current) in answer.messages {
            if let Some(before) = answered.insert(at, current.clone()) {
                // Only the id asked twice, once in each of two asks, is answered twice.
                assert_eq!((at, before), (id(7), current), "answered twice");
            }
        }
        match answer.next {
            Some(next) => {
                assert!(next > 0, "moves on");
                from += next;
            }
            None => break,
        }
    }
    assert!(asks > 5, "cut by bytes: {asks} asks");
    assert_eq!(answered.len(), 200);
    for n in 2..=201u32 {
        let current = &answered[&id(n)];
        let (deleted, edited, text) = match (n - 2) % 20 {
            0 => (false, true, "\"".repeat(4000)),
            10 => (true, false, String::new()),
            _ => (false, false, control.clone()),
        };
        assert_eq!(
            (current.deleted, current.edited, &current.text),
            (deleted, edited, &text),
            "message {n}"
        );
    }
}
