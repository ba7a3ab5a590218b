//! Helpers to test projections the way the host runs them, without NATS: apply events through
//! pending batches and commits, into an in-memory map or a real sled view.

use std::collections::BTreeMap;

use chatlog_events::ChatEvent;

use crate::{
    Projection, Read,
    view::{Overlay, Pending, View},
};

/// An in-memory view for given/when/then tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Memory(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl Read for Memory {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }

    fn with(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) {
        f(self.0.get(key).map(Vec::as_slice));
    }
}

impl Memory {
    /// Applies `events` in order (seq = position + 1 unless given) and returns the derived events.
    pub fn apply<P: Projection>(
        &mut self,
        projection: &P,
        seq: u64,
        event: &ChatEvent,
    ) -> Vec<ChatEvent> {
        let changes = projection.apply(self, seq, event);
        for (key, value) in changes.writes {
            match value {
                Some(v) => {
                    self.0.insert(key, v);
                }
                None => {
                    self.0.remove(&key);
                }
            }
        }
        changes.emit
    }
}

/// Applies `events` (with their seqs) to a sled view as the host does: in batches of `batch`,
/// each committed with its checkpoint. Events at or below the view's checkpoint are skipped, like
/// the host skips what it already applied.
pub fn replay<P: Projection>(
    projection: &P,
    view: &View,
    events: &[(u64, ChatEvent)],
    batch: usize,
) {
    let mut pending = Pending::default();
    let mut last = view.checkpoint().unwrap_or_default();
    for (seq, event) in events {
        if *seq <= last {
            continue;
        }
        let changes = projection.apply(
            &Overlay {
                view,
                pending: &pending,
            },
            *seq,
            event,
        );
        pending.add(changes);
        last = *seq;
        if pending.events >= batch.max(1) {
            view.commit(&mut pending, last).expect("commit");
        }
    }
    view.commit(&mut pending, last).expect("commit");
}
