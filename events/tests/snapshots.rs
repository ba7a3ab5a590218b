//! Snapshot tests of the wire format: one stored CloudEvent per event type, compared with the
//! JSON files under `tests/snapshots/`. A failing test here means the log's format changed: if
//! that is on purpose, run with `UPDATE_SNAPSHOTS=1`, review the diff and update the protocol doc.

use std::path::PathBuf;

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, UserId,
    event::{
        AccountRegistered, AccountReserved, Empty, GuestClaimed, Membership, MessageDeleted,
        MessageEdited, MessagePosted, NotificationCreated, NotificationRead, Presence, Reaction,
        ReadMarked, RoomCreated, RoomUpdated,
    },
};
use chrono::{DateTime, Utc};

fn id(n: u8) -> EventId {
    EventId::parse(&format!("0190f7a2-5b1c-7000-8000-0000000000{n:02x}")).unwrap()
}

fn samples() -> Vec<ChatEvent> {
    let lobby = RoomId::parse("lobby").unwrap();
    let ada = UserId::parse("ada").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let time: DateTime<Utc> = "2026-11-23T12:00:00.123456Z".parse().unwrap();
    let room = |p| ChatEvent::in_room(&lobby, ada.clone(), "edge", p);
    let user = |p| ChatEvent::for_user(&bob, bob.clone(), "edge", p);
    let mut all = vec![
        room(Payload::RoomCreated(RoomCreated {
            name: "Lobby".into(),
            topic: "say hi".into(),
            private: true,
            members: vec![ada.clone(), bob.clone()],
        })),
        room(Payload::RoomUpdated(RoomUpdated {
            name: None,
            topic: Some("new topic".into()),
        })),
        room(Payload::MemberJoined(Membership {
            member: bob.clone(),
        })),
        room(Payload::MemberLeft(Membership {
            member: bob.clone(),
        })),
        room(Payload::MessagePosted(MessagePosted {
            text: "hi @bob \"quoted\" ünïcode".into(),
            mentions: vec![bob.clone()],
            reply_to: Some(id(0xff)),
            attachments: Vec::new(),
        })),
        room(Payload::MessageEdited(MessageEdited {
            message_id: id(0xfe),
            text: "fixed".into(),
        })),
        room(Payload::MessageDeleted(MessageDeleted {
            message_id: id(0xfe),
        })),
        room(Payload::ReactionAdded(Reaction {
            message_id: id(0xfe),
            emoji: "👍".into(),
        })),
        room(Payload::ReactionRemoved(Reaction {
            message_id: id(0xfe),
            emoji: "👍".into(),
        })),
        room(Payload::PresenceOnline(Presence::of("c1"))),
        room(Payload::PresenceHeartbeat(Presence::of("c1"))),
        room(Payload::PresenceOffline(Presence::of("c1"))),
        room(Payload::TypingStarted(Empty {})),
        room(Payload::TypingStopped(Empty {})),
        user(Payload::ReadMarked(ReadMarked {
            room: lobby.clone(),
            seq: 42,
        })),
        ChatEvent::for_user(
            &bob,
            bob.clone(),
            "notifications",
            Payload::NotificationCreated(NotificationCreated {
                room: lobby.clone(),
                seq: 42,
                message_id: id(0xfd),
                by: ada.clone(),
                text: "hi @bob".into(),
                reason: "mention".into(),
            }),
        ),
        user(Payload::NotificationRead(NotificationRead {
            ids: vec![id(0xfc)],
            all: false,
        })),
        user(Payload::AccountRegistered(AccountRegistered {
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        })),
        user(Payload::GuestClaimed(GuestClaimed {
            secret_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .into(),
        })),
        ChatEvent::for_user(
            &UserId::parse("echo").unwrap(),
            UserId::parse("echo").unwrap(),
            "cli",
            Payload::AccountReserved(AccountReserved {
                by: "function".into(),
            }),
        ),
    ];
    for (n, ev) in all.iter_mut().enumerate() {
        *ev = ev.clone().with_id(id(n as u8)).with_time(time);
    }
    all[0].traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    all
}

fn snapshot_path(ty: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{ty}.json"))
}

#[test]
fn every_event_type_has_a_sample() {
    let mut types: Vec<_> = samples().iter().map(|e| e.payload.event_type()).collect();
    types.sort();
    let mut known = Payload::TYPES.to_vec();
    known.sort();
    assert_eq!(types, known);
}

#[test]
fn event_json_matches_the_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut drifted = Vec::new();
    for ev in samples() {
        let value: serde_json::Value = serde_json::from_slice(&ev.to_json().unwrap()).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = snapshot_path(ev.payload.event_type());
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &pretty).unwrap();
            continue;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "missing snapshot {}; run with UPDATE_SNAPSHOTS=1",
                path.display()
            )
        });
        if stored != pretty {
            drifted.push(format!(
                "{}:\n--- stored\n{stored}+++ now\n{pretty}",
                path.display()
            ));
        }
    }
    assert!(
        drifted.is_empty(),
        "wire format drifted:\n{}",
        drifted.join("\n")
    );
}

#[test]
fn every_sample_decodes_to_itself() {
    for ev in samples() {
        let json = ev.to_json().unwrap();
        assert_eq!(
            ChatEvent::decode(&json).unwrap(),
            ev,
            "{}",
            ev.payload.event_type()
        );
    }
}

#[test]
fn stored_events_are_cloudevents_1_0() {
    for ev in samples() {
        let v: serde_json::Value = serde_json::from_slice(&ev.to_json().unwrap()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["datacontenttype"], "application/json");
        assert!(v["source"].as_str().unwrap().starts_with("/chatlog/"));
        assert!(v["data"]["user"].is_string(), "data.user is always there");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn the_direct_body_is_the_sdk_cloudevent() {
    let mut all = samples();
    // Text that needs escaping, and an event without a trace context.
    let lobby = RoomId::parse("lobby").unwrap();
    all.push(ChatEvent::in_room(
        &lobby,
        UserId::parse("ada").unwrap(),
        "edge",
        Payload::MessagePosted(MessagePosted {
            text: "\"quoted\"\n\ttab \\ back \u{1F600} \u{0001}".into(),
            mentions: vec![],
            reply_to: None,
            attachments: Vec::new(),
        }),
    ));
    // A function's answer: its hop count is an extension attribute, read back by both decoders.
    let mut answer = all[all.len() - 1].clone();
    answer.component = "function/echo".into();
    answer.hops = 2;
    all.push(answer.clone());
    for ev in all {
        let direct: serde_json::Value = serde_json::from_slice(&ev.to_json().unwrap()).unwrap();
        let sdk = serde_json::to_value(ev.to_cloudevent().unwrap()).unwrap();
        assert_eq!(direct, sdk, "{}", ev.payload.event_type());
        assert_eq!(direct.get("chatloghops").is_some(), ev.hops > 0);
    }
    let body = answer.to_json().unwrap();
    assert_eq!(ChatEvent::decode(&body).unwrap(), answer);
    let sdk: cloudevents::Event = serde_json::from_slice(&body).unwrap();
    assert_eq!(ChatEvent::from_cloudevent(sdk).unwrap(), answer);
}
