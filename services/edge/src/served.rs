//! Stored room events as the edge serves them (`GET .../events`, a `join`'s catch-up): a deleted
//! message's text never reaches a client again, and an edited one's events carry its latest text
//! ([`chatlog_events::redaction`]). The message's state comes from the history view once it holds
//! the position read up to, so a deletion stored before the read is never missed.

use std::collections::BTreeSet;

use chatlog_events::{
    EventId, RoomId,
    queries::{CurrentAnswer, CurrentRequest, MAX_CURRENT_IDS, history},
    redaction,
};

use crate::{error::ApiError, log::Stored, views::Views};

/// Rewrites `events` (stored in `room`, read up to seq `upto`) as they are to be served now.
pub async fn as_now(
    views: &Views,
    room: &RoomId,
    upto: u64,
    events: &mut [Stored],
) -> Result<(), ApiError> {
    let texts: Vec<Option<EventId>> = events.iter().map(|m| redaction::text_of(&m.body)).collect();
    let ids: BTreeSet<EventId> = texts.iter().flatten().copied().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let now = current(views, room, ids.into_iter().collect(), upto).await?;
    for (event, text) in events.iter_mut().zip(texts) {
        if let Some(current) = text.and_then(|id| now.messages.get(&id))
            && let Some(body) = redaction::as_now(&event.body, current)
        {
            event.body = body.into();
        }
    }
    Ok(())
}

/// What the history view holds now of messages `ids` of `room`, once it holds seq `upto`: asked
/// in chunks, each answered in parts when its texts would make one answer too large.
pub async fn current(
    views: &Views,
    room: &RoomId,
    ids: Vec<EventId>,
    upto: u64,
) -> Result<CurrentAnswer, ApiError> {
    let mut now = CurrentAnswer {
        messages: Default::default(),
        next: None,
    };
    for chunk in ids.chunks(MAX_CURRENT_IDS) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let request = CurrentRequest {
                room: room.clone(),
                ids: rest.to_vec(),
                partial: true,
            };
            let answer: CurrentAnswer = views
                .ask_strict(history::VIEW, history::CURRENT, &request, upto)
                .await?;
            now.messages.extend(answer.messages);
            rest = match answer.next {
                // At least one answered each time, or the view could loop us.
                Some(0) => return Err(ApiError::internal("the history view answered no id")),
                Some(next) => rest.get(next..).unwrap_or_default(),
                None => &[],
            };
        }
    }
    Ok(now)
}
