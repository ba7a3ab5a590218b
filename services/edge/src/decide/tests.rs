//! Given a room (and a message), when a user asks this, then these payloads or this refusal.

use std::collections::BTreeMap;

use chatlog_events::{
    EventId, Payload, RoomId, UserId,
    event::{Membership, MessageEdited, MessagePosted},
    queries::{MessageView, RoomView},
};

use super::{Change, Command, Given, GuestLogin, decide, guest};
use crate::{
    accounts::{Holder, sha256_hex},
    error::Code,
};

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn private_room(creator: &str, members: &[&str]) -> RoomView {
    RoomView {
        id: RoomId::parse("secret").unwrap(),
        name: "secret".into(),
        topic: String::new(),
        private: true,
        members: members.iter().map(|m| user(m)).collect(),
        creator: user(creator),
        last_seq: 7,
    }
}

fn public_room(members: &[&str]) -> RoomView {
    RoomView {
        private: false,
        id: RoomId::parse("lobby").unwrap(),
        ..private_room("chatlog", members)
    }
}

fn message(room: &RoomView, author: &str, deleted: bool) -> MessageView {
    MessageView {
        seq: 3,
        id: EventId::parse("0190f7a2-5b1c-7000-8000-000000000001").unwrap(),
        room: room.id.clone(),
        user: user(author),
        text: if deleted { String::new() } else { "hi".into() },
        time: chrono::DateTime::UNIX_EPOCH,
        reply_to: None,
        edited: false,
        deleted,
        moderated: false,
        reactions: BTreeMap::new(),
        reaction_counts: BTreeMap::new(),
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn given(room: &RoomView) -> Given<'_> {
    Given {
        room,
        message: None,
    }
}

fn refused(result: Result<Vec<Payload>, crate::error::ApiError>) -> Code {
    result.expect_err("refused").code
}

fn joined(name: &str) -> Payload {
    Payload::MemberJoined(Membership { member: user(name) })
}

fn left(name: &str) -> Payload {
    Payload::MemberLeft(Membership { member: user(name) })
}

fn post(text: &str, mentions: &[&str]) -> Command {
    Command::Post {
        text: text.into(),
        mentions: mentions.iter().map(|m| user(m)).collect(),
        reply_to: None,
    }
}

#[test]
fn a_first_join_of_a_public_room_makes_a_member_and_a_second_appends_nothing() {
    let room = public_room(&["ada"]);
    assert_eq!(
        decide(&user("bob"), &given(&room), Command::Join).unwrap(),
        [joined("bob")]
    );
    assert!(
        decide(&user("ada"), &given(&room), Command::Join)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_private_room_is_not_found_for_a_non_member_whatever_they_ask() {
    let room = private_room("ada", &["ada", "bob"]);
    let eve = user("eve");
    for command in [
        Command::Join,
        Command::Look,
        post("hi", &[]),
        Command::Read { seq: 1 },
        Command::AddMember {
            member: user("eve"),
        },
        Command::RemoveMember {
            member: user("bob"),
        },
    ] {
        assert_eq!(
            refused(decide(&eve, &given(&room), command.clone())),
            Code::NotFound,
            "{command:?}"
        );
    }
}

#[test]
fn a_removed_member_cannot_join_or_add_themselves_again() {
    // bob was removed: the room as of its head no longer lists him.
    let room = private_room("ada", &["ada"]);
    let bob = user("bob");
    assert_eq!(
        refused(decide(&bob, &given(&room), Command::Join)),
        Code::NotFound
    );
    assert_eq!(
        refused(decide(
            &bob,
            &given(&room),
            Command::AddMember {
                member: bob.clone()
            }
        )),
        Code::NotFound
    );
}

#[test]
fn a_member_of_a_private_room_joins_without_appending() {
    let room = private_room("ada", &["ada", "bob"]);
    assert!(
        decide(&user("bob"), &given(&room), Command::Join)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_member_adds_someone_to_a_private_room_once() {
    let room = private_room("ada", &["ada", "bob"]);
    let add = |m: &str| Command::AddMember { member: user(m) };
    assert_eq!(
        decide(&user("bob"), &given(&room), add("carol")).unwrap(),
        [joined("carol")]
    );
    assert!(
        decide(&user("bob"), &given(&room), add("ada"))
            .unwrap()
            .is_empty()
    );
    let public = public_room(&[]);
    assert_eq!(
        refused(decide(&user("bob"), &given(&public), add("carol"))),
        Code::BadRequest
    );
}

#[test]
fn only_the_creator_removes_someone_else_and_anyone_may_leave() {
    let room = private_room("ada", &["ada", "bob", "carol"]);
    let remove = |m: &str| Command::RemoveMember { member: user(m) };
    assert_eq!(
        decide(&user("ada"), &given(&room), remove("bob")).unwrap(),
        [left("bob")]
    );
    assert_eq!(
        refused(decide(&user("bob"), &given(&room), remove("carol"))),
        Code::Forbidden
    );
    assert_eq!(
        decide(&user("bob"), &given(&room), remove("bob")).unwrap(),
        [left("bob")]
    );
    assert_eq!(
        refused(decide(&user("ada"), &given(&room), remove("dave"))),
        Code::NotFound
    );
    // In a public room one leaves oneself; nobody removes anyone.
    let public = public_room(&["ada", "bob"]);
    assert_eq!(
        decide(&user("bob"), &given(&public), remove("bob")).unwrap(),
        [left("bob")]
    );
    assert_eq!(
        refused(decide(&user("ada"), &given(&public), remove("bob"))),
        Code::BadRequest
    );
}

#[test]
fn a_creator_who_left_has_no_power_left() {
    let room = private_room("ada", &["bob", "carol"]);
    assert_eq!(
        refused(decide(
            &user("ada"),
            &given(&room),
            Command::RemoveMember {
                member: user("bob")
            }
        )),
        Code::NotFound
    );
}

#[test]
fn mentions_in_a_private_room_name_its_members_only() {
    let room = private_room("ada", &["ada", "bob"]);
    let payloads = decide(
        &user("ada"),
        &given(&room),
        post("@bob @eve", &["bob", "eve"]),
    )
    .unwrap();
    assert_eq!(
        payloads,
        [Payload::MessagePosted(MessagePosted {
            text: "@bob @eve".into(),
            mentions: vec![user("bob")],
            reply_to: None,
            attachments: Vec::new(),
        })]
    );
    // A public room's mentions are every held name the adapter found.
    let public = public_room(&[]);
    let payloads = decide(&user("ada"), &given(&public), post("@eve", &["eve"])).unwrap();
    assert!(matches!(&payloads[..], [Payload::MessagePosted(p)] if p.mentions == [user("eve")]));
}

#[test]
fn only_the_author_edits_or_deletes_and_anyone_reacts() {
    let room = public_room(&[]);
    let message = message(&room, "ada", false);
    let given = Given {
        room: &room,
        message: Some(&message),
    };
    let change = |change| Command::Change {
        message_id: message.id,
        change,
    };
    let edit = change(Change::Edit {
        text: "fixed".into(),
    });
    assert_eq!(
        decide(&user("ada"), &given, edit.clone()).unwrap(),
        [Payload::MessageEdited(MessageEdited {
            message_id: message.id,
            text: "fixed".into()
        })]
    );
    assert_eq!(refused(decide(&user("bob"), &given, edit)), Code::Forbidden);
    assert_eq!(
        refused(decide(&user("bob"), &given, change(Change::Delete))),
        Code::Forbidden
    );
    let react = change(Change::React {
        emoji: "👍".into(),
        remove: false,
    });
    assert!(matches!(
        &decide(&user("bob"), &given, react).unwrap()[..],
        [Payload::ReactionAdded(_)]
    ));
}

#[test]
fn a_deleted_or_unknown_message_or_one_of_another_room_takes_no_change() {
    let room = public_room(&[]);
    let deleted = message(&room, "ada", true);
    let elsewhere = MessageView {
        room: RoomId::parse("other").unwrap(),
        ..message(&room, "ada", false)
    };
    for found in [None, Some(&deleted), Some(&elsewhere)] {
        let given = Given {
            room: &room,
            message: found,
        };
        let command = Command::Change {
            message_id: deleted.id,
            change: Change::Edit { text: "x".into() },
        };
        assert_eq!(
            refused(decide(&user("ada"), &given, command)),
            Code::NotFound
        );
    }
}

#[test]
fn a_read_marker_needs_a_seq() {
    let room = public_room(&[]);
    assert_eq!(
        refused(decide(
            &user("ada"),
            &given(&room),
            Command::Read { seq: 0 }
        )),
        Code::BadRequest
    );
    assert!(matches!(
        &decide(&user("ada"), &given(&room), Command::Read { seq: 4 }).unwrap()[..],
        [Payload::ReadMarked(m)] if m.seq == 4
    ));
}

#[test]
fn members_are_read_at_the_head_only_where_a_rule_needs_them() {
    assert!(Command::Join.needs_members(false));
    assert!(
        Command::RemoveMember {
            member: user("bob")
        }
        .needs_members(false)
    );
    assert!(!post("hi", &[]).needs_members(false));
    assert!(post("hi", &[]).needs_members(true));
    assert!(Command::Look.needs_members(true));
}

fn held_by_guest(secret: &str) -> Holder {
    Holder::Guest {
        secret_sha256: sha256_hex(secret),
    }
}

#[test]
fn a_free_name_is_claimed_with_the_secret_given_or_a_new_one() {
    let claimed = guest(&Holder::Free, None, || "fresh-secret-0123456789".into()).unwrap();
    let GuestLogin::Claim { secret, claim } = claimed else {
        panic!("{claimed:?}");
    };
    assert_eq!(secret, "fresh-secret-0123456789");
    assert_eq!(claim.secret_sha256, sha256_hex(&secret));
    assert_ne!(
        claim.secret_sha256, secret,
        "the claim keeps a hash, never the secret"
    );
    let brought = guest(&Holder::Free, Some("my-own-secret-0123"), || unreachable!()).unwrap();
    assert!(matches!(brought, GuestLogin::Claim { secret, .. } if secret == "my-own-secret-0123"));
}

#[test]
fn a_name_a_guest_holds_needs_its_secret() {
    let holder = held_by_guest("alices-secret-0123");
    assert_eq!(
        guest(&holder, Some("alices-secret-0123"), || unreachable!()).unwrap(),
        GuestLogin::LogIn {
            secret: "alices-secret-0123".into()
        }
    );
    let without = guest(&holder, None, || unreachable!()).unwrap_err();
    assert_eq!(without.code, Code::Conflict);
    let wrong = guest(&holder, Some("mallorys-guess-0123"), || unreachable!()).unwrap_err();
    assert_eq!(wrong.code, Code::Unauthorized);
}

#[test]
fn an_accounts_name_is_no_guests() {
    let account = Holder::Account {
        password_hash: "$argon2id$...".into(),
    };
    for secret in [None, Some("any-secret-at-all-0123")] {
        assert_eq!(
            guest(&account, secret, || unreachable!()).unwrap_err().code,
            Code::Conflict
        );
    }
}

#[test]
fn a_reserved_name_is_nobodys() {
    // A function's name: a guest must not post as the bot, nor be taken for its moderation.
    for secret in [None, Some("any-secret-at-all-0123")] {
        assert_eq!(
            guest(&Holder::Reserved, secret, || unreachable!())
                .unwrap_err()
                .code,
            Code::BadRequest
        );
    }
}
