//! Given / when / then for presence, with explicit event times (no clock, no sleeping).

use chatlog_events::{ChatEvent, Payload, event::Presence as P};
use chatlog_runtime::{Projection, View, testing::replay};
use chatlog_test_support::fixtures::{
    Fixture, at, event, heartbeat, lobby, offline, online, room, typing,
};

use super::*;

struct Then {
    _dir: tempfile::TempDir,
    view: View,
}

fn given(events: Vec<ChatEvent>) -> Then {
    let dir = tempfile::tempdir().unwrap();
    let view = View::open(&dir.path().join("p"), "presence", 1).unwrap();
    let numbered: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect();
    replay(&Presence::default(), &view, &numbered, 3);
    Then { _dir: dir, view }
}

impl Then {
    fn when(self, more: Vec<ChatEvent>) -> Self {
        let start = self.view.checkpoint().unwrap();
        let numbered: Vec<_> = more
            .into_iter()
            .enumerate()
            .map(|(i, e)| (start + i as u64 + 1, e))
            .collect();
        replay(&Presence::default(), &self.view, &numbered, 3);
        self
    }

    fn online(&self) -> Vec<String> {
        room_presence(&self.view, &lobby())
            .unwrap()
            .online
            .iter()
            .map(|u| u.to_string())
            .collect()
    }

    fn typing(&self) -> Vec<String> {
        room_presence(&self.view, &lobby())
            .unwrap()
            .typing
            .iter()
            .map(|u| u.to_string())
            .collect()
    }
}

#[test]
fn a_user_comes_online_and_goes_offline() {
    let then = given(vec![online(1, "ada", "c1").at(0)]);
    assert_eq!(then.online(), ["ada"]);
    let then = then.when(vec![offline(2, "ada", "c1").at(5)]);
    assert!(then.online().is_empty());
}

#[test]
fn a_user_with_two_tabs_stays_online_until_both_are_gone() {
    let then = given(vec![
        online(1, "ada", "tab1").at(0),
        online(2, "ada", "tab2").at(1),
    ]);
    assert_eq!(then.online(), ["ada"], "listed once");
    let then = then.when(vec![offline(3, "ada", "tab1").at(2)]);
    assert_eq!(then.online(), ["ada"]);
    let then = then.when(vec![offline(4, "ada", "tab2").at(3)]);
    assert!(then.online().is_empty());
}

#[test]
fn online_users_are_sorted() {
    let then = given(vec![
        online(1, "bob", "c1").at(0),
        online(2, "ada", "c2").at(0),
        online(3, "ada-2", "c3").at(0),
    ]);
    assert_eq!(then.online(), ["ada", "ada-2", "bob"]);
}

#[test]
fn a_connection_without_heartbeat_times_out_and_one_with_heartbeats_does_not() {
    let then = given(vec![
        online(1, "ada", "c1").at(0),
        online(2, "bob", "c2").at(0),
        heartbeat(3, "bob", "c2").at(15),
        heartbeat(4, "bob", "c2").at(30),
    ]);
    // At 36 s ada's last sign of life is 36 s old, bob's 6 s.
    let due = Presence::default().tick(&then.view, at(36));
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].user.as_str(), "ada");
    assert!(matches!(&due[0].payload, Payload::PresenceOffline(p) if p.connection == "c1"));
    assert_eq!(due[0].component, "presence");
    // The same timeout computed twice (a replica, a retry) has the same id.
    assert_eq!(
        Presence::default().tick(&then.view, at(40))[0].id,
        due[0].id
    );
    // When the handler's own offline event comes back through the log, ada is gone.
    let then = then.when(due);
    assert_eq!(then.online(), ["bob"]);
    assert!(Presence::default().tick(&then.view, at(40)).is_empty());
}

#[test]
fn one_heartbeat_keeps_its_connection_online_in_every_room_it_names() {
    let (kitchen, attic) = (room("kitchen"), room("attic"));
    let then = given(vec![
        online(1, "ada", "c1").at(0),
        online(2, "ada", "c1").in_room(&kitchen).at(0),
        online(3, "ada", "c1").in_room(&attic).at(0),
        // Appended on the lobby's subject (the first of its rooms), naming the other two.
        event(
            4,
            "ada",
            Payload::PresenceHeartbeat(P {
                connection: "c1".into(),
                rooms: vec![attic.clone(), kitchen.clone(), lobby()],
            }),
        )
        .at(30),
    ]);
    assert!(
        Presence::default().tick(&then.view, at(50)).is_empty(),
        "20 s after the heartbeat nobody is due"
    );
    for room in [&kitchen, &attic, &lobby()] {
        let online = room_presence(&then.view, room).unwrap().online;
        assert_eq!(online.len(), 1, "{room}");
    }
    // Without one, each room times the connection out by itself.
    let due = Presence::default().tick(&then.view, at(70));
    let mut rooms: Vec<_> = due.iter().filter_map(|e| e.room()).collect();
    rooms.sort();
    assert_eq!(rooms, [attic.clone(), kitchen.clone(), lobby()]);
}

#[test]
fn typing_starts_stops_and_runs_out() {
    let then = given(vec![
        online(1, "ada", "c1").at(0),
        typing(2, "ada", true).at(1),
    ]);
    assert_eq!(then.typing(), ["ada"]);
    let then = then.when(vec![typing(3, "ada", false).at(2)]);
    assert!(then.typing().is_empty());
    let then = then.when(vec![typing(4, "ada", true).at(10)]);
    assert!(
        Presence::default().tick(&then.view, at(15)).is_empty(),
        "5 s: still typing"
    );
    let due = Presence::default().tick(&then.view, at(17));
    assert!(matches!(due.as_slice(), [e] if matches!(e.payload, Payload::TypingStopped(_))));
    let then = then.when(due);
    assert!(then.typing().is_empty());
}

#[test]
fn a_refreshed_typing_flag_lasts_from_the_refresh() {
    let then = given(vec![
        typing(1, "ada", true).at(0),
        typing(2, "ada", true).at(4),
    ]);
    assert!(Presence::default().tick(&then.view, at(8)).is_empty());
    assert_eq!(Presence::default().tick(&then.view, at(11)).len(), 1);
}

#[test]
fn going_offline_ends_typing() {
    let then = given(vec![
        online(1, "ada", "c1").at(0),
        typing(2, "ada", true).at(1),
    ])
    .when(vec![offline(3, "ada", "c1").at(2)]);
    assert!(then.typing().is_empty());
}
