//! The event-id index: where every applied event is, by id, in groups.
//!
//! An entry per event cost one sled insert per event, the largest part of a rebuild (sled copies
//! a leaf on every insert and splits one every few). Ids made by the edge are UUIDv7: their first
//! six bytes are the millisecond they were made, so events of one moment share a group key,
//! `i/<first 6 bytes>`, and a batch writes a group once. Its value is its entries one after the
//! other: the 16-byte id, a 2-byte big-endian length, the location.
//!
//! A group holds at most [`GROUP_MAX`] entries, so that ids chosen to share a prefix (a client
//! may pick its own) cannot grow one value without bound: the entries after that go under
//! `j/<id>`, one per event, as every entry once did.

use chatlog_events::EventId;
use chatlog_runtime::{Changes, Read};

/// Entries in a group at most; the others spill to keys of their own.
pub const GROUP_MAX: usize = 256;

const PREFIX: usize = 6;

fn group_key(id: &EventId) -> Vec<u8> {
    let mut key = b"i/".to_vec();
    key.extend_from_slice(&id.as_uuid().as_bytes()[..PREFIX]);
    key
}

fn spill_key(id: &EventId) -> Vec<u8> {
    let mut key = b"j/".to_vec();
    key.extend_from_slice(id.as_uuid().as_bytes());
    key
}

/// The entries of a group value: (id bytes, location).
fn entries(group: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let mut rest = group;
    std::iter::from_fn(move || {
        let id = rest.get(..16)?;
        let len = usize::from(u16::from_be_bytes(rest.get(16..18)?.try_into().ok()?));
        let location = rest.get(18..18 + len)?;
        rest = &rest[18 + len..];
        Some((id, location))
    })
}

/// The group of one id, read once for both looking up and recording.
pub struct Group {
    key: Vec<u8>,
    /// Where the id was applied, when the group holds it.
    found: Option<Vec<u8>>,
    /// The group's value, copied to grow, when it does not.
    value: Vec<u8>,
    len: usize,
}

impl Group {
    pub fn read(view: &dyn Read, id: &EventId) -> Group {
        let key = group_key(id);
        let wanted = id.as_uuid().as_bytes();
        let mut group = Group {
            key,
            found: None,
            value: Vec::new(),
            len: 0,
        };
        view.with(&group.key, &mut |value| {
            let value = value.unwrap_or_default();
            for (at, location) in entries(value) {
                if at == wanted {
                    group.found = Some(location.to_vec());
                    return;
                }
                group.len += 1;
            }
            // Room for this entry: its id, length and a location.
            group.value = Vec::with_capacity(value.len() + 64);
            group.value.extend_from_slice(value);
        });
        group
    }

    /// Where `id` was applied, if it was.
    pub fn find(&self, view: &dyn Read, id: &EventId) -> Option<Vec<u8>> {
        if self.found.is_some() {
            return self.found.clone();
        }
        if self.len >= GROUP_MAX {
            return view.get(&spill_key(id));
        }
        None
    }

    /// Records that `id` was applied at `location`.
    pub fn record(mut self, changes: &mut Changes, id: &EventId, location: &[u8]) {
        let Ok(len) = u16::try_from(location.len()) else {
            return; // a room name is far shorter; nothing longer is ever recorded
        };
        if self.len >= GROUP_MAX {
            changes.put(spill_key(id), location.to_vec());
            return;
        }
        self.value.extend_from_slice(id.as_uuid().as_bytes());
        self.value.extend_from_slice(&len.to_be_bytes());
        self.value.extend_from_slice(location);
        changes.put(self.key, self.value);
    }
}

/// Where `id` was applied, if it was.
pub fn find(view: &dyn Read, id: &EventId) -> Option<Vec<u8>> {
    Group::read(view, id).find(view, id)
}
