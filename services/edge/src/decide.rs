//! The edge's rules, in one pure function: a command (a client's intent, parsed and checked in
//! form by its adapter) and the room as of its head go in; the payloads to append, or a refusal,
//! come out. No I/O here: the adapters (`ws`, `http`) read the state ([`crate::rooms`]) and append
//! what comes out. Tested given (the room) / when (a command) / then (payloads or refusal).
//!
//! Membership rules are [`chatlog_events::membership::allowed`], the one the views apply too.
//! A guest login is decided here as well ([`guest`]), on who holds the name.

use chatlog_events::{
    EventId, Payload, UserId,
    event::{
        GuestClaimed, Membership, MessageDeleted, MessageEdited, MessagePosted, Reaction,
        ReadMarked,
    },
    membership,
    queries::{MessageView, RoomView},
};

use crate::{
    accounts::{Holder, sha256_hex},
    error::{ApiError, Code},
};

/// A change to an existing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit { text: String },
    Delete,
    React { emoji: String, remove: bool },
}

/// What a client asks of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start receiving the room (and, the first time, become a member).
    Join,
    Post {
        text: String,
        /// The well-formed `@id`s of the text whose names someone holds.
        mentions: Vec<UserId>,
        reply_to: Option<EventId>,
    },
    /// Edit, delete or react to `message` (as the history view holds it at the room's head).
    Change {
        message_id: EventId,
        change: Change,
    },
    AddMember {
        member: UserId,
    },
    RemoveMember {
        member: UserId,
    },
    /// A read marker (stored on the user's own subject).
    Read {
        seq: u64,
    },
    /// Anything that needs only the right to see the room: typing, reading its pages.
    Look,
}

impl Command {
    /// Whether deciding needs the room's members as of its head (a view read); a public room's
    /// posts, changes and reads do not.
    pub fn needs_members(&self, private: bool) -> bool {
        private || matches!(self, Command::Join | Command::RemoveMember { .. })
    }
}

impl Command {
    /// The users whose membership deciding needs: the actor, and whom the command names (the
    /// member added or removed, the users a post mentions).
    pub fn concerns(&self, actor: &UserId) -> Vec<UserId> {
        let mut users = vec![actor.clone()];
        match self {
            Command::AddMember { member } | Command::RemoveMember { member } => {
                users.push(member.clone());
            }
            Command::Post { mentions, .. } => users.extend(mentions.iter().cloned()),
            _ => {}
        }
        users.dedup();
        users
    }
}

/// The state a decision reads: the room (when [`Command::needs_members`], its members as of its
/// head among [`Command::concerns`]) and, for a change, the message it names.
pub struct Given<'a> {
    pub room: &'a RoomView,
    pub message: Option<&'a MessageView>,
}

/// The decision: what to append (possibly nothing), or why not.
pub fn decide(actor: &UserId, given: &Given, command: Command) -> Result<Vec<Payload>, ApiError> {
    let room = given.room;
    // A private room is invisible to anyone but its members, whatever they ask.
    if !room.visible_to(actor) {
        return Err(ApiError::not_found(&format!("room {}", room.id)));
    }
    let member = |m: &UserId| Membership { member: m.clone() };
    match command {
        Command::Look => Ok(Vec::new()),
        Command::Join => {
            if room.members.contains(actor) {
                return Ok(Vec::new());
            }
            Ok(vec![Payload::MemberJoined(member(actor))])
        }
        Command::Post {
            text,
            mut mentions,
            reply_to,
        } => {
            if room.private {
                // Only members can be notified in a private room; nobody else is named to it.
                mentions.retain(|u| room.members.contains(u));
            }
            Ok(vec![Payload::MessagePosted(MessagePosted {
                text,
                mentions,
                reply_to,
                attachments: Vec::new(),
            })])
        }
        Command::Change { message_id, change } => {
            let message = given
                .message
                .filter(|m| m.room == room.id && m.id == message_id && !m.deleted)
                .ok_or_else(|| ApiError::not_found("message"))?;
            let own = &message.user == actor;
            Ok(vec![match change {
                Change::Edit { text } if own => {
                    Payload::MessageEdited(MessageEdited { message_id, text })
                }
                Change::Delete if own => Payload::MessageDeleted(MessageDeleted { message_id }),
                Change::Edit { .. } | Change::Delete => {
                    return Err(ApiError::new(
                        Code::Forbidden,
                        "only the author may edit or delete a message",
                    ));
                }
                Change::React { emoji, remove } => {
                    let reaction = Reaction { message_id, emoji };
                    if remove {
                        Payload::ReactionRemoved(reaction)
                    } else {
                        Payload::ReactionAdded(reaction)
                    }
                }
            }])
        }
        Command::AddMember { member: added } => {
            if !room.private {
                return Err(ApiError::bad_request(
                    "anyone may join a public room: no one needs adding",
                ));
            }
            if room.members.contains(&added) {
                return Ok(Vec::new());
            }
            let payload = Payload::MemberJoined(member(&added));
            allow(room, actor, payload, "only a member may add someone")
        }
        Command::RemoveMember { member: removed } => {
            if &removed != actor && !room.private {
                return Err(ApiError::bad_request(
                    "anyone may join a public room: no one can be removed from it",
                ));
            }
            if !room.members.contains(&removed) {
                return Err(ApiError::not_found(&format!("member {removed}")));
            }
            let payload = Payload::MemberLeft(member(&removed));
            allow(
                room,
                actor,
                payload,
                "only the room's creator may remove someone else",
            )
        }
        Command::Read { seq } => {
            if seq == 0 {
                return Err(ApiError::bad_request("seq must be at least 1"));
            }
            Ok(vec![Payload::ReadMarked(ReadMarked {
                room: room.id.clone(),
                seq,
            })])
        }
    }
}

/// What a guest login does, decided on who holds the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLogin {
    /// The name is free: append this claim (only if the name's subject is still empty), then
    /// hand out this secret.
    Claim { secret: String, claim: GuestClaimed },
    /// The guest holding the name, proven by its secret.
    LogIn { secret: String },
}

/// A guest login for a name held by `holder`, with the `secret` the client gave (already checked
/// in form); `new_secret` makes one for a first claim that brought none.
pub fn guest(
    holder: &Holder,
    secret: Option<&str>,
    new_secret: impl FnOnce() -> String,
) -> Result<GuestLogin, ApiError> {
    match holder {
        Holder::Account { .. } => Err(ApiError::new(
            Code::Conflict,
            "that name belongs to a registered account: log in",
        )),
        Holder::Guest { secret_sha256 } => match secret {
            None => Err(ApiError::new(
                Code::Conflict,
                "that name is held by another guest",
            )),
            Some(secret) if &sha256_hex(secret) == secret_sha256 => Ok(GuestLogin::LogIn {
                secret: secret.to_string(),
            }),
            Some(_) => Err(ApiError::new(
                Code::Unauthorized,
                "wrong secret for that guest name",
            )),
        },
        Holder::Reserved => Err(ApiError::bad_request("that name is reserved")),
        Holder::Free => {
            let secret = secret.map_or_else(new_secret, str::to_string);
            let claim = GuestClaimed {
                secret_sha256: sha256_hex(&secret),
            };
            Ok(GuestLogin::Claim { secret, claim })
        }
    }
}

/// The payload, if the membership rule allows `actor` to append it.
fn allow(
    room: &RoomView,
    actor: &UserId,
    payload: Payload,
    refusal: &str,
) -> Result<Vec<Payload>, ApiError> {
    if membership::allowed(Some(room), actor, &payload) {
        Ok(vec![payload])
    } else {
        Err(ApiError::new(Code::Forbidden, refusal))
    }
}

#[cfg(test)]
mod tests;
