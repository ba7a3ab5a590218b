//! Posting a message, shared by the `send` frame and `POST /api/rooms/{room}/messages`:
//! validation of everything the client gave, then the `chat.message.posted` event to append.

use chatlog_events::{ChatEvent, EventId, Payload, RoomId, UserId, event::MessagePosted};

use crate::{
    AppState,
    error::{ApiError, Code},
};

/// Validates a message and builds its event. Nothing is appended here.
pub async fn post(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    text: String,
    id: Option<&str>,
    reply_to: Option<&str>,
) -> Result<ChatEvent, ApiError> {
    let id = match id {
        Some(id) => EventId::parse(id).map_err(|_| ApiError::bad_request("id must be a uuid"))?,
        None => EventId::new(),
    };
    validate_text(&text, state.config.limits.max_text_chars)?;
    let reply_to = reply_to
        .map(EventId::parse)
        .transpose()
        .map_err(|_| ApiError::bad_request("reply_to must be an event id"))?;
    state.rooms.visible(room, user, &state.views).await?;
    let mentions = existing(state, room, mentions(&text)).await;
    let payload = Payload::MessagePosted(MessagePosted {
        text,
        mentions,
        reply_to,
    });
    Ok(ChatEvent::in_room(room, user.clone(), "edge", payload).with_id(id))
}

/// The mentioned users that exist: members of the room (the history view says) or registered
/// accounts. When the view cannot say, every well-formed mention is kept (the notifications
/// handler notifies members only anyway).
async fn existing(state: &AppState, room: &RoomId, mentioned: Vec<UserId>) -> Vec<UserId> {
    use chatlog_events::{
        Stream,
        queries::{RoomRequest, RoomView, history},
        subjects,
    };
    if mentioned.is_empty() {
        return mentioned;
    }
    let request = RoomRequest { room: room.clone() };
    let members = match state
        .views
        .ask::<_, Option<RoomView>>(history::VIEW, history::ROOM, &request)
        .await
    {
        Ok(Some(view)) => view.members,
        Ok(None) => Vec::new(),
        Err(_) => return mentioned,
    };
    let mut kept = Vec::with_capacity(mentioned.len());
    for user in mentioned {
        let exists = members.contains(&user)
            || matches!(
                state
                    .log
                    .last_message(Stream::Accounts, &subjects::account(&user))
                    .await,
                Ok(Some(_))
            );
        if exists {
            kept.push(user);
        }
    }
    kept
}

/// Text must not be blank and must fit the limit.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("text is empty"));
    }
    if text.chars().count() > max_chars {
        return Err(ApiError::new(
            Code::TooLarge,
            format!("text is longer than {max_chars} characters"),
        ));
    }
    Ok(())
}

/// The valid user ids written as `@id` in `text`, each once, in order of appearance. An `@` counts
/// only at the start or after a character that cannot be part of an id (so `a@b.c` is no mention).
pub fn mentions(text: &str) -> Vec<UserId> {
    let is_id_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let mut found: Vec<UserId> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        if c == '@' && !previous.is_some_and(|p| is_id_char(p) || p == '@') {
            let rest = &text[at + 1..];
            let end = rest.find(|c: char| !is_id_char(c)).unwrap_or(rest.len());
            if let Ok(user) = UserId::parse(&rest[..end])
                && !found.contains(&user)
            {
                found.push(user);
            }
        }
        previous = Some(c);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: Vec<UserId>) -> Vec<String> {
        v.into_iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn it_finds_mentions() {
        assert_eq!(
            ids(mentions("hi @bob and @eve-2, @bob again")),
            ["bob", "eve-2"]
        );
        assert_eq!(ids(mentions("@ada: look")), ["ada"]);
        assert!(mentions("mail a@b.c or @ or @UPPER or @-x").is_empty());
        assert!(mentions(&format!("@{}", "x".repeat(33))).is_empty());
    }

    #[test]
    fn it_refuses_blank_and_long_text() {
        assert_eq!(
            validate_text("  \n\t", 10).unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(validate_text("ééééé", 4).unwrap_err().code, Code::TooLarge);
        assert!(validate_text("éééé", 4).is_ok());
    }
}

/// A change to an existing message.
#[derive(Debug, Clone)]
pub enum Change {
    Edit { text: String },
    Delete,
    React { emoji: String, remove: bool },
}

/// Longest reaction, in bytes (an emoji sequence, or a short name like `+1`).
pub const MAX_EMOJI_BYTES: usize = 64;

/// Validates a change of message `message_id` in `room` by `user` and builds its event: the
/// message must exist in that room (the history view says), edits and deletes are the author's
/// alone, and a deleted message takes no change.
pub async fn change(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    message_id: &str,
    id: Option<&str>,
    change: Change,
) -> Result<ChatEvent, ApiError> {
    use chatlog_events::{
        event::{MessageDeleted, MessageEdited, Reaction},
        queries::{MessageRequest, MessageView, history},
    };
    let id = match id {
        Some(id) => EventId::parse(id).map_err(|_| ApiError::bad_request("id must be a uuid"))?,
        None => EventId::new(),
    };
    let message_id = EventId::parse(message_id)
        .map_err(|_| ApiError::bad_request("message_id must be an event id"))?;
    match &change {
        Change::Edit { text } => validate_text(text, state.config.limits.max_text_chars)?,
        Change::React { emoji, .. } => {
            if emoji.is_empty()
                || emoji.len() > MAX_EMOJI_BYTES
                || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApiError::bad_request(format!(
                    "emoji must be 1 to {MAX_EMOJI_BYTES} bytes without spaces"
                )));
            }
        }
        Change::Delete => {}
    }
    state.rooms.visible(room, user, &state.views).await?;
    // The view may lag the log by a few milliseconds: asked once it holds everything the room
    // had, it knows a message just sent.
    let head = state.log.room_head(room).await?;
    let message: Option<MessageView> = state
        .views
        .ask_at(
            history::VIEW,
            history::MESSAGE,
            &MessageRequest { id: message_id },
            Some(head),
        )
        .await?;
    let message = message
        .filter(|m| &m.room == room && !m.deleted)
        .ok_or_else(|| ApiError::not_found("message"))?;
    let own = &message.user == user;
    let payload = match change {
        Change::Edit { text } if own => Payload::MessageEdited(MessageEdited { message_id, text }),
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
    };
    Ok(ChatEvent::in_room(room, user.clone(), "edge", payload).with_id(id))
}

/// Validates a read marker and builds its `chat.read.marked` on the user's own subject.
pub async fn read_marker(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    seq: u64,
    id: Option<&str>,
) -> Result<ChatEvent, ApiError> {
    use chatlog_events::event::ReadMarked;
    let id = match id {
        Some(id) => EventId::parse(id).map_err(|_| ApiError::bad_request("id must be a uuid"))?,
        None => EventId::new(),
    };
    if seq == 0 {
        return Err(ApiError::bad_request("seq must be at least 1"));
    }
    state.rooms.visible(room, user, &state.views).await?;
    let payload = Payload::ReadMarked(ReadMarked {
        room: room.clone(),
        seq,
    });
    Ok(ChatEvent::for_user(user, user.clone(), "edge", payload).with_id(id))
}
