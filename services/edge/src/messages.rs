//! Messages, shared by the WebSocket frames and the HTTP routes: validation of everything the
//! client gave, the state the decision needs read at the room's head, [`crate::decide`], and the
//! event to append (posted, edited, deleted, a reaction, a read marker).

use chatlog_events::{ChatEvent, EventId, Payload, RoomId, UserId, queries::MessageView};

pub use crate::decide::Change;
use crate::{
    AppState,
    accounts::Holder,
    decide::{Command, Given, decide},
    error::{ApiError, Code},
};

/// Most files one message carries.
pub const MAX_ATTACHMENTS: usize = 10;

/// A message as a client sent it (a `send` frame, `POST /api/rooms/{room}/messages`).
pub struct Post<'a> {
    pub text: String,
    pub id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// File ids.
    pub attachments: &'a [String],
}

/// Validates a message, decides it on the room ([`crate::decide`]) and builds its event.
/// Nothing is appended here.
pub async fn post(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    post: Post<'_>,
) -> Result<ChatEvent, ApiError> {
    let Post {
        text,
        id,
        reply_to,
        attachments,
    } = post;
    let id = parse_id(id)?;
    let files = parse_attachments(attachments)?;
    // A message of files alone may have no text.
    if files.is_empty() || !text.is_empty() {
        validate_text(&text, state.config.limits.max_text_chars)?;
    }
    let reply_to = reply_to
        .map(EventId::parse)
        .transpose()
        .map_err(|_| ApiError::bad_request("reply_to must be an event id"))?;
    let mentions = held(state, mentions(&text)).await?;
    let command = Command::Post {
        text,
        mentions,
        reply_to,
    };
    let mut payload = decide_one(state, user, room, command, None).await?;
    // After the decision: a room the caller may not post to answers as it does without files.
    if let Payload::MessagePosted(posted) = &mut payload {
        posted.attachments = attached(state, user, room, id, &files).await?;
    }
    Ok(ChatEvent::in_room(room, user.clone(), "edge", payload).with_id(id))
}

/// The file ids a message names, well formed, each once, at most [`MAX_ATTACHMENTS`].
fn parse_attachments(ids: &[String]) -> Result<Vec<crate::files::FileId>, ApiError> {
    if ids.len() > MAX_ATTACHMENTS {
        return Err(ApiError::bad_request(format!(
            "a message carries at most {MAX_ATTACHMENTS} files"
        )));
    }
    let mut files: Vec<crate::files::FileId> = Vec::with_capacity(ids.len());
    for id in ids {
        let file = crate::files::FileId::parse(id)
            .ok_or_else(|| ApiError::bad_request(format!("{id:?} is not a file id")))?;
        if !files.contains(&file) {
            files.push(file);
        }
    }
    Ok(files)
}

/// What message `message` carries of `files`: each must be one `user` uploaded to `room`
/// (another's, another room's or an unknown one are refused alike, 400, saying nothing of it).
/// Each file names the message before it is appended, so a stored message's files always name
/// it (a message whose append then fails is named until a sweep finds it was never stored).
async fn attached(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    message: EventId,
    files: &[crate::files::FileId],
) -> Result<Vec<chatlog_events::event::Attachment>, ApiError> {
    use crate::files::store::Attach;
    // Each file's info is its own compare and set: the files are named at once, not in turn.
    let attaches = futures::future::try_join_all(files.iter().map(|file| async move {
        if file.room() == room {
            state.files.attach(file, user, message).await
        } else {
            Ok(Attach::NotUploaded)
        }
    }))
    .await?;
    let mut out = Vec::with_capacity(files.len());
    for (file, attach) in files.iter().zip(attaches) {
        let meta = match attach {
            Attach::Attached(meta) => *meta,
            Attach::NotUploaded => {
                return Err(ApiError::bad_request(format!(
                    "{file} is not a file you uploaded to {room}"
                )));
            }
            Attach::TooMany => {
                return Err(ApiError::bad_request(format!(
                    "{file} is attached to {} messages already",
                    crate::files::store::MAX_MESSAGES
                )));
            }
        };
        out.push(chatlog_events::event::Attachment {
            id: file.to_string(),
            name: meta.name,
            size: meta.size,
            content_type: meta.content_type,
        });
    }
    Ok(out)
}

/// Reads what `command` needs as of the room's head, decides, and returns its one payload.
async fn decide_one(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    command: Command,
    message: Option<MessageView>,
) -> Result<Payload, ApiError> {
    let concerns = command.concerns(user);
    let (view, _) = state
        .rooms
        .at_head(room, &state.views, &concerns, |private| {
            command.needs_members(private)
        })
        .await?;
    let given = Given {
        room: &view,
        message: message.as_ref(),
    };
    decide(user, &given, command)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the decision appends nothing"))
}

fn parse_id(id: Option<&str>) -> Result<EventId, ApiError> {
    match id {
        Some(id) => EventId::parse(id).map_err(|_| ApiError::bad_request("id must be a uuid")),
        None => Ok(EventId::new()),
    }
}

/// The mentioned names that someone holds (an account or a guest): a mention of nobody is text.
async fn held(state: &AppState, mentioned: Vec<UserId>) -> Result<Vec<UserId>, ApiError> {
    let mut kept = Vec::with_capacity(mentioned.len());
    for user in mentioned {
        if state.accounts.holder(&state.log, &user).await? != Holder::Free {
            kept.push(user);
        }
    }
    Ok(kept)
}

/// Text must not be blank, must fit the limit and must hold no control character.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), ApiError> {
    use chatlog_events::text::{TextError, check};
    match check(text, max_chars) {
        Ok(()) => Ok(()),
        Err(TextError::Blank) => Err(ApiError::bad_request("text is empty")),
        Err(TextError::Control(c)) => Err(control("text", c)),
        Err(TextError::TooLong) => Err(ApiError::new(
            Code::TooLarge,
            format!("text is longer than {max_chars} characters"),
        )),
    }
}

pub use chatlog_events::text::is_refused_control;

fn control(what: &str, c: char) -> ApiError {
    ApiError::bad_request(format!(
        "{what} holds a control character (U+{:04X})",
        u32::from(c)
    ))
}

/// `bad_request` naming `what` when `value` holds a refused control character.
pub fn refuse_controls(what: &str, value: &str) -> Result<(), ApiError> {
    match value.chars().find(|c| is_refused_control(*c)) {
        Some(c) => Err(control(what, c)),
        None => Ok(()),
    }
}

pub use chatlog_events::text::{MAX_MENTIONS, mentions};

/// Longest reaction, in bytes (an emoji sequence, or a short name like `+1`).
pub const MAX_EMOJI_BYTES: usize = 64;

/// Validates a change of message `message_id` in `room` by `user` and builds its event, decided
/// on the message as the history view holds it once it has the room's head (a message just sent
/// is known). With it, for a delete, the files the message carries (to release once the delete
/// is stored: [`crate::files::sweep::release`]).
pub async fn change(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    message_id: &str,
    id: Option<&str>,
    change: Change,
) -> Result<(ChatEvent, Vec<crate::files::FileId>), ApiError> {
    use chatlog_events::queries::{MessageRequest, history};
    let id = parse_id(id)?;
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
    // Asked before the decision, which refuses a non-member before it looks at the message.
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
    let files = match (&change, &message) {
        (Change::Delete, Some(message)) => message
            .attachments
            .iter()
            .filter_map(|a| crate::files::FileId::parse(&a.id))
            .collect(),
        _ => Vec::new(),
    };
    let command = Command::Change { message_id, change };
    let payload = decide_one(state, user, room, command, message).await?;
    Ok((
        ChatEvent::in_room(room, user.clone(), "edge", payload).with_id(id),
        files,
    ))
}

/// Validates a read marker and builds its `chat.read.marked` on the user's own subject.
pub async fn read_marker(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    seq: u64,
    id: Option<&str>,
) -> Result<ChatEvent, ApiError> {
    let id = parse_id(id)?;
    let payload = decide_one(state, user, room, Command::Read { seq }, None).await?;
    Ok(ChatEvent::for_user(user, user.clone(), "edge", payload).with_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_refuses_control_characters_but_newlines_and_tabs() {
        assert!(validate_text("two\nlines\tand a tab, ünïcode 👍", 100).is_ok());
        for bad in [
            "\u{1}",
            "a\rb",
            "\u{7f}",
            "\u{85}",
            "\u{9b}",
            "\u{202e}gnp.exe",
            "\u{2067}x",
        ] {
            let e = validate_text(&format!("hi {bad}"), 100).unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{bad:?}");
            assert!(e.message.contains("control"), "{}", e.message);
        }
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
