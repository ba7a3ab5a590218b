//! Where a view's derived events stand, kept in NATS (the `CHATLOG_MARKS` bucket that `chatlog
//! setup` creates, replicated like the streams), not on the handler's disk: a handler that comes
//! back with an empty disk rebuilds its view from the log and emits nothing twice. The events'
//! deterministic ids alone protect only within the stream's duplicate window.

use std::{path::Path, time::Duration};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chatlog_events::streams::MARKS_BUCKET;

use crate::{HostError, host::Stopping};

/// Emitted for every source event up to `through`.
pub struct Emitter {
    pub(crate) through: u64,
    mark: Option<Mark>,
}

/// The view's key in the marks bucket, and the revision this emitter last read or wrote.
struct Mark {
    store: kv::Store,
    key: String,
    revision: Option<u64>,
}

/// How long a handler waits at start for the marks bucket before it gives up.
pub const MARKS_PATIENCE: Duration = Duration::from_secs(60);

impl Emitter {
    /// The emitter of `view`, reading how far it (or another replica of it) emitted. Waits up to
    /// `patience` for the bucket. A mark of an older version, kept beside the view's directory
    /// (`<view_dir>.emitted`), still counts: it is the floor.
    pub async fn open(
        js: &jetstream::Context,
        view: &str,
        view_dir: &Path,
        patience: Duration,
    ) -> Result<Emitter, HostError> {
        let until = tokio::time::Instant::now() + patience;
        let store = loop {
            match js.get_key_value(MARKS_BUCKET).await {
                Ok(store) => break store,
                Err(e) if tokio::time::Instant::now() >= until => {
                    return Err(HostError::Nats(format!(
                        "the marks bucket {MARKS_BUCKET} cannot be read ({e}): run `chatlog setup` \
                         with credentials that may create it (make up does)"
                    )));
                }
                Err(e) => {
                    tracing::warn!(view, error = %e, "waiting for the marks bucket: run `chatlog setup`");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let legacy = std::fs::read_to_string(view_dir.with_extension("emitted"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut mark = Mark {
            store,
            key: view.to_string(),
            revision: None,
        };
        let stored = loop {
            match mark.read().await {
                Ok(stored) => break stored,
                Err(e) if tokio::time::Instant::now() >= until => return Err(e),
                Err(e) => {
                    tracing::warn!(view, error = %e, "reading the emission mark, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut emitter = Emitter {
            through: stored,
            mark: Some(mark),
        };
        if legacy > stored {
            emitter.emitted_through(legacy, &Stopping::never()).await?;
        }
        Ok(emitter)
    }

    /// An emitter that emits nothing: a rebuild reconstructs the view, the derived events of
    /// the past are in the log already.
    pub fn silent() -> Emitter {
        Emitter {
            through: u64::MAX,
            mark: None,
        }
    }

    /// Records that everything up to `seq` was emitted (acknowledged by the stream). Moves the
    /// mark forward only: when another replica moved it further, that stands.
    pub(crate) async fn emitted_through(
        &mut self,
        seq: u64,
        stopping: &Stopping,
    ) -> Result<(), HostError> {
        if seq <= self.through {
            return Ok(());
        }
        self.through = seq;
        let Some(mark) = &mut self.mark else {
            return Ok(());
        };
        let mut pause = Duration::from_millis(50);
        loop {
            let value = Bytes::from(seq.to_string());
            let attempt = async {
                Ok(match mark.revision {
                    Some(revision) => mark
                        .store
                        .update(&mark.key, value, revision)
                        .await
                        .map_err(|e| e.to_string()),
                    None => mark
                        .store
                        .create(&mark.key, value)
                        .await
                        .map_err(|e| e.to_string()),
                })
            };
            let written = stopping.unless(attempt).await?;
            let error = match written {
                Ok(revision) => {
                    mark.revision = Some(revision);
                    return Ok(());
                }
                Err(e) => e,
            };
            // Another replica wrote it since (a revision this one has not seen), or NATS failed:
            // read it again.
            match stopping.unless(async { Ok(mark.read().await) }).await? {
                Ok(theirs) if theirs >= seq => {
                    self.through = theirs;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = mark.key, error = %error, read = %e, "writing the emission mark failed, retrying");
                    stopping.sleep(pause).await?;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl Mark {
    /// The stored mark (0 when there is none), remembering its revision for the next update.
    async fn read(&mut self) -> Result<u64, HostError> {
        let entry = self
            .store
            .entry(&self.key)
            .await
            .map_err(|e| HostError::Nats(e.to_string()))?;
        let Some(entry) = entry else {
            self.revision = None;
            return Ok(0);
        };
        self.revision = Some(entry.revision);
        Ok(match entry.operation {
            kv::Operation::Put => std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            kv::Operation::Delete | kv::Operation::Purge => 0,
        })
    }
}
