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
    state.rooms.visible(room, user).await?;
    let mentions = mentions(&text);
    let payload = Payload::MessagePosted(MessagePosted {
        text,
        mentions,
        reply_to,
    });
    Ok(ChatEvent::in_room(room, user.clone(), "edge", payload).with_id(id))
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
