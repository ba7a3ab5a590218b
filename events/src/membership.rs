//! Who may change a room's membership: the one rule the edge checks before appending a
//! `chat.member.joined` / `chat.member.left` and the views check when applying one, so that an
//! event the edge would have refused (forged, or from an older edge) changes no view.
//!
//! - `chat.member.joined {member}` by `user`: in a public room only `member == user` (joining
//!   oneself); in a private room only a current member may add someone (themselves included, a
//!   no-op), so whoever left or was removed cannot come back on their own.
//! - `chat.member.left {member}` by `user`: a member may leave (`member == user`); only the
//!   creator of a private room, while still a member, may remove someone else.
//! - an event of a room not known (no `chat.room.created` seen) is refused.

use crate::{Payload, UserId, queries::RoomView};

/// What the rule needs to know of a room, as of the events before the one judged.
pub trait Room {
    fn private(&self) -> bool;
    fn creator(&self) -> &UserId;
    /// Whether `user` is a member now.
    fn is_member(&self, user: &UserId) -> bool;
}

impl Room for RoomView {
    fn private(&self) -> bool {
        self.private
    }

    fn creator(&self) -> &UserId {
        &self.creator
    }

    fn is_member(&self, user: &UserId) -> bool {
        self.members.contains(user)
    }
}

/// Whether `actor` may append `payload` to `room` (`None`: a room not known). Only membership
/// events are judged here: any other payload is `true`.
pub fn allowed<R: Room + ?Sized>(room: Option<&R>, actor: &UserId, payload: &Payload) -> bool {
    let (joined, member) = match payload {
        Payload::MemberJoined(m) => (true, &m.member),
        Payload::MemberLeft(m) => (false, &m.member),
        _ => return true,
    };
    let Some(room) = room else {
        return false;
    };
    match (joined, member == actor) {
        (true, true) => !room.private() || room.is_member(actor),
        (true, false) => room.private() && room.is_member(actor),
        (false, true) => room.is_member(actor),
        (false, false) => room.private() && room.creator() == actor && room.is_member(actor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RoomId, event::Membership};

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    /// A room created by ada with these members.
    fn room(private: bool, members: &[&str]) -> RoomView {
        RoomView {
            id: RoomId::parse("r").unwrap(),
            name: "r".into(),
            topic: String::new(),
            private,
            members: members.iter().map(|m| user(m)).collect(),
            creator: user("ada"),
            last_seq: 1,
        }
    }

    fn joins(room: &RoomView, actor: &str, member: &str) -> bool {
        let payload = Payload::MemberJoined(Membership {
            member: user(member),
        });
        allowed(Some(room), &user(actor), &payload)
    }

    fn leaves(room: &RoomView, actor: &str, member: &str) -> bool {
        let payload = Payload::MemberLeft(Membership {
            member: user(member),
        });
        allowed(Some(room), &user(actor), &payload)
    }

    #[test]
    fn anyone_joins_a_public_room_but_only_themselves() {
        let public = room(false, &[]);
        assert!(joins(&public, "bob", "bob"));
        assert!(
            !joins(&public, "ada", "bob"),
            "not even its creator adds others"
        );
        assert!(!joins(&room(false, &["ada"]), "ada", "bob"));
    }

    #[test]
    fn only_a_member_adds_someone_to_a_private_room() {
        let private = room(true, &["ada", "bob"]);
        assert!(
            joins(&private, "bob", "eve"),
            "any member, not only the creator"
        );
        assert!(joins(&private, "ada", "eve"));
        assert!(
            !joins(&private, "eve", "eve"),
            "a non-member cannot add themselves"
        );
        assert!(!joins(&private, "eve", "mal"), "nor anyone else");
    }

    #[test]
    fn someone_removed_cannot_come_back_on_their_own() {
        // bob was a member, and was removed.
        let private = room(true, &["ada"]);
        assert!(!joins(&private, "bob", "bob"));
        assert!(!joins(&private, "bob", "eve"));
    }

    #[test]
    fn a_member_leaves_themselves() {
        assert!(leaves(&room(true, &["ada", "bob"]), "bob", "bob"));
        assert!(leaves(&room(false, &["bob"]), "bob", "bob"));
        assert!(
            !leaves(&room(true, &["ada"]), "bob", "bob"),
            "not a member: nothing to leave"
        );
    }

    #[test]
    fn only_the_creator_still_a_member_removes_someone_else_from_a_private_room() {
        let private = room(true, &["ada", "bob", "eve"]);
        assert!(leaves(&private, "ada", "bob"));
        assert!(
            !leaves(&private, "eve", "bob"),
            "a member who is not the creator"
        );
        let creator_gone = room(true, &["bob", "eve"]);
        assert!(!leaves(&creator_gone, "ada", "bob"), "a creator who left");
        let public = room(false, &["ada", "bob"]);
        assert!(
            !leaves(&public, "ada", "bob"),
            "nobody is removed from a public room"
        );
    }

    #[test]
    fn events_of_an_unknown_room_are_refused() {
        let payload = Payload::MemberJoined(Membership {
            member: user("bob"),
        });
        assert!(!allowed::<RoomView>(None, &user("bob"), &payload));
        let payload = Payload::MemberLeft(Membership {
            member: user("bob"),
        });
        assert!(!allowed::<RoomView>(None, &user("bob"), &payload));
    }

    #[test]
    fn other_events_are_not_judged_here() {
        let payload = Payload::TypingStarted(crate::event::Empty {});
        assert!(allowed::<RoomView>(None, &user("bob"), &payload));
    }
}
