//! What becomes of a file once the messages that attach it are deleted, and of a file nobody
//! attached: hidden from readers at once ([`released`]), its bytes deleted when its author's
//! delete is stored ([`release`]) and by the sweeper every edge runs ([`every`], [`sweep`]).
//!
//! **Invariants.** A file is removed only when no live message names it: every message it names
//! is deleted in the history view (asked once the view holds the room's head, so a deletion or a
//! post stored before the question is never missed), or was never stored (named longer ago than
//! the unattached period: its send failed after the attach). A file no message names is removed
//! once its last upload is older than the unattached period. Every change is a compare and set
//! on the file's info ([`Files::settle`]): several edges sweeping at once each act on the info as
//! it is, and a file attached while it is being removed either names the message before the
//! removal (and is kept) or is gone before the attach (and the send is refused).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chatlog_events::{EventId, RoomId};

use super::store::{FileId, FileMeta, Files, Settle, Settled, time};
use crate::{AppState, error::ApiError, log::Log, metrics::counters, views::Views};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Files looked at.
    pub files: usize,
    /// Files deleted.
    pub removed: Vec<FileId>,
    /// References to deleted messages dropped from files that live on.
    pub forgotten: usize,
    /// Files (or rooms) that could not be settled this time (the history view or NATS failed).
    pub failed: usize,
}

/// The state of some messages of a room: `Some(deleted)`, or `None` when the history view has no
/// such message (not stored, or not stored yet).
type States = BTreeMap<EventId, Option<bool>>;

/// What the history view holds now of `ids` of `room`, once it holds the room's head.
async fn states(
    log: &Log,
    views: &Views,
    room: &RoomId,
    ids: &BTreeSet<EventId>,
) -> Result<States, ApiError> {
    if ids.is_empty() {
        return Ok(States::new());
    }
    let head = log.room_head(room).await?;
    let now = crate::served::current(views, room, ids.iter().copied().collect(), head).await?;
    Ok(ids
        .iter()
        .map(|id| (*id, now.messages.get(id).map(|m| m.deleted)))
        .collect())
}

/// Whether `meta` is no longer served: it names messages, all deleted, and was not uploaded
/// again since the last attached it. A message the view does not know counts as live here (it
/// may be one being sent); the sweeper decides about those.
pub async fn released(state: &AppState, meta: &FileMeta) -> Result<bool, ApiError> {
    if meta.messages.is_empty() || meta.uploaded_since_attached() {
        return Ok(false);
    }
    let ids = meta.messages.keys().copied().collect();
    let now = states(&state.log, &state.views, meta.id.room(), &ids).await?;
    Ok(now.values().all(|deleted| *deleted == Some(true)))
}

/// What to do with `meta` given its messages' `states` (each of them asked), `now` and the
/// unattached period (milliseconds).
fn decide(meta: &FileMeta, states: &States, now: i64, unattached: i64) -> Settle {
    let old = |at: &str| now - time(at) >= unattached;
    let (mut live, mut dead) = (0, Vec::new());
    for (message, attached) in &meta.messages {
        match states.get(message).copied().flatten() {
            Some(false) => live += 1,
            Some(true) => dead.push(*message),
            None if old(attached) => dead.push(*message),
            // Not stored yet (a send in progress): live for now.
            None => live += 1,
        }
    }
    if live > 0 {
        return if dead.is_empty() {
            Settle::Keep
        } else {
            Settle::Forget(dead)
        };
    }
    if !meta.messages.is_empty() && !meta.uploaded_since_attached() {
        return Settle::Delete;
    }
    if old(&meta.uploaded) {
        Settle::Delete
    } else if dead.is_empty() {
        Settle::Keep
    } else {
        Settle::Forget(dead)
    }
}

/// Settles file `id`: `known` holds the states of messages already asked about; any other the
/// file names when it is read is asked about then.
async fn settle(
    files: &Files,
    log: &Log,
    views: &Views,
    id: &FileId,
    known: &States,
    unattached: Duration,
) -> Result<Settled, ApiError> {
    let unattached = i64::try_from(unattached.as_millis()).unwrap_or(i64::MAX);
    let settled = files
        .settle(id, |meta| async move {
            let unknown: BTreeSet<EventId> = meta
                .messages
                .keys()
                .filter(|m| !known.contains_key(*m))
                .copied()
                .collect();
            let mut states = states(log, views, meta.id.room(), &unknown).await?;
            states.extend(known.iter().map(|(k, v)| (*k, *v)));
            let now = chrono::Utc::now().timestamp_millis();
            Ok::<_, ApiError>(decide(&meta, &states, now, unattached))
        })
        .await?;
    if settled == Settled::Deleted {
        counters::add(&counters::FILES_REMOVED, 1);
        tracing::info!(file = %id, "file removed: no live message names it");
    }
    Ok(settled)
}

/// One sweep of the whole bucket: every file settled, its messages asked about a room at a time.
pub async fn sweep(
    files: &Files,
    log: &Log,
    views: &Views,
    unattached: Duration,
) -> Result<Swept, ApiError> {
    let listed = files.list().await?;
    let mut swept = Swept {
        files: listed.len(),
        ..Swept::default()
    };
    let mut rooms: BTreeMap<RoomId, Vec<FileMeta>> = BTreeMap::new();
    for meta in listed {
        rooms.entry(meta.id.room().clone()).or_default().push(meta);
    }
    for (room, metas) in rooms {
        let ids = metas
            .iter()
            .flat_map(|m| m.messages.keys().copied())
            .collect();
        let known = match states(log, views, &room, &ids).await {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!(room = %room, error = %e.message, "sweeping a room's files failed");
                swept.failed += metas.len();
                continue;
            }
        };
        for meta in metas {
            match settle(files, log, views, &meta.id, &known, unattached).await {
                Ok(Settled::Deleted) => swept.removed.push(meta.id),
                Ok(Settled::Forgot(n)) => swept.forgotten += n,
                Ok(Settled::Kept | Settled::Missing) => {}
                Err(e) => {
                    tracing::warn!(file = %meta.id, error = %e.message, "sweeping a file failed");
                    swept.failed += 1;
                }
            }
        }
    }
    counters::add(&counters::FILE_SWEEPS, 1);
    Ok(swept)
}

/// After a message's delete is stored: its files that no other live message names are deleted
/// now, off the request's path (best effort: what fails here, the next sweep does).
pub fn release(state: &AppState, files: Vec<FileId>) {
    if files.is_empty() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let unattached = state.config.files_unattached;
        for id in files {
            let known = States::new();
            if let Err(e) = settle(
                &state.files,
                &state.log,
                &state.views,
                &id,
                &known,
                unattached,
            )
            .await
            {
                tracing::debug!(file = %id, error = %e.message, "releasing a deleted message's file failed");
            }
        }
    });
}

/// Sweeps every `period` (give or take a quarter, so that edges started together do not sweep
/// together) until `shutdown`.
pub async fn every(state: AppState, shutdown: impl Future<Output = ()>) {
    let period = state.config.files_sweep;
    if period.is_zero() {
        return;
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        let wait = period.mul_f64(0.75 + jitter / 2.0);
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
        match sweep(
            &state.files,
            &state.log,
            &state.views,
            state.config.files_unattached,
        )
        .await
        {
            Ok(swept) => tracing::info!(
                files = swept.files,
                removed = swept.removed.len(),
                forgotten = swept.forgotten,
                failed = swept.failed,
                "files swept"
            ),
            Err(e) => tracing::warn!(error = %e.message, "sweeping the files failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn at(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn file(uploaded: i64, messages: &[(EventId, i64)]) -> FileMeta {
        let mut meta = FileMeta::for_tests(FileId::new(RoomId::parse("lobby").unwrap(), &[1; 32]));
        meta.uploaded = at(uploaded);
        meta.messages = messages.iter().map(|(m, t)| (*m, at(*t))).collect();
        meta
    }

    #[test]
    fn a_file_goes_when_no_live_message_names_it() {
        let (a, b) = (EventId::new(), EventId::new());
        let now = 10 * DAY;
        let live = States::from([(a, Some(false)), (b, Some(true))]);
        let both_dead = States::from([(a, Some(true)), (b, Some(true))]);
        let unknown = States::from([(a, None)]);
        let attached = file(now - 10, &[(a, now - 5), (b, now - 5)]);
        // One live message keeps it, the deleted one is forgotten.
        assert_eq!(decide(&attached, &live, now, DAY), Settle::Forget(vec![b]));
        // All deleted: at once, however recent.
        assert_eq!(decide(&attached, &both_dead, now, DAY), Settle::Delete);
        // Uploaded again since: a fresh upload, kept for the period, its dead names dropped.
        let again = file(now - 1, &[(a, now - 5), (b, now - 5)]);
        assert_eq!(
            decide(&again, &both_dead, now, DAY),
            Settle::Forget(vec![a, b])
        );
        // A message not stored: live while recent, dead once older than the period.
        let sending = file(now - 10, &[(a, now - 5)]);
        assert_eq!(decide(&sending, &unknown, now, DAY), Settle::Keep);
        let failed = file(now - 2 * DAY, &[(a, now - 2 * DAY)]);
        assert_eq!(decide(&failed, &unknown, now, DAY), Settle::Delete);
        // Never attached: kept for the period from its last upload, then removed.
        assert_eq!(
            decide(&file(now - DAY + 1, &[]), &States::new(), now, DAY),
            Settle::Keep
        );
        assert_eq!(
            decide(&file(now - DAY, &[]), &States::new(), now, DAY),
            Settle::Delete
        );
    }
}
