//! The event-id index: where every applied event is, by id, in groups.
//!
//! An entry per event cost one sled insert per event, the largest part of a rebuild (sled copies
//! a leaf on every insert and splits one every few). Ids made by the edge are UUIDv7: their first
//! six bytes are the millisecond they were made, so events of one moment share a group key,
//! `i/<first 6 bytes>`, and a batch writes a group once. Its value is laid out for a binary
//! search by id (see [`Layout`]).
//!
//! A group holds at most [`GROUP_MAX`] entries, so that ids chosen to share a prefix (a client
//! may pick its own) cannot grow one value without bound: the entries after that go under
//! `j/<id>`, one per event, as every entry once did. Ids that are not UUIDv7 (a client's random
//! ids) have no time prefix to share and go under `j/<id>` directly.

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

/// A group value: `n` (2 bytes, big-endian), the `n` ids sorted (16 bytes each), then the `n`
/// locations in the same order (each a 2-byte big-endian length and its bytes). The sorted ids
/// make a lookup a binary search, which matters for a full group: ids that share a prefix (a
/// client picking a random prefix and a counter) fill one, and every later event of theirs is
/// looked up in it before its own key.
struct Layout<'a> {
    ids: &'a [u8],
    locations: &'a [u8],
}

impl<'a> Layout<'a> {
    fn parse(value: &'a [u8]) -> Option<Layout<'a>> {
        if value.is_empty() {
            return Some(Layout {
                ids: &[],
                locations: &[],
            });
        }
        let n = usize::from(u16::from_be_bytes(value.get(..2)?.try_into().ok()?));
        let ids = value.get(2..2 + n * 16)?;
        let locations = value.get(2 + n * 16..)?;
        Some(Layout { ids, locations })
    }

    fn len(&self) -> usize {
        self.ids.len() / 16
    }

    /// Where `id` is among the sorted ids, or where it would go.
    fn search(&self, id: &[u8; 16]) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.ids[mid * 16..mid * 16 + 16].cmp(id.as_slice()) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    /// The byte offset of location `index` in `locations` (its end for `index == len`).
    fn location_at(&self, index: usize) -> Option<usize> {
        let mut at = 0;
        for _ in 0..index {
            let len = u16::from_be_bytes(self.locations.get(at..at + 2)?.try_into().ok()?);
            at += 2 + usize::from(len);
        }
        Some(at)
    }

    fn location(&self, index: usize) -> Option<&'a [u8]> {
        let at = self.location_at(index)?;
        let len = u16::from_be_bytes(self.locations.get(at..at + 2)?.try_into().ok()?);
        self.locations.get(at + 2..at + 2 + usize::from(len))
    }
}

/// The group of one id, read once for both looking up and recording.
pub struct Group {
    key: Vec<u8>,
    /// Where the id was applied, when the group holds it.
    found: Option<Vec<u8>>,
    /// When it does not: the group's value (copied with room to grow), where the id goes among
    /// the ids and where its location goes among the locations (byte offset in `value`).
    value: Vec<u8>,
    insert: Option<(usize, usize)>,
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
            insert: None,
            len: 0,
        };
        if id.as_uuid().get_version_num() != 7 {
            // No time prefix (a client's random id): nothing to share a group with, so its own
            // key, as a full group's overflow, without reading a group first.
            group.len = GROUP_MAX;
            return group;
        }
        view.with(&group.key, &mut |value| {
            let value = value.unwrap_or_default();
            // An unreadable group is treated as empty: its ids are applied again, not lost.
            let Some(layout) = Layout::parse(value) else {
                group.insert = Some((0, 0));
                return;
            };
            group.len = layout.len();
            match layout.search(wanted) {
                Ok(i) => group.found = layout.location(i).map(<[u8]>::to_vec),
                Err(at) if group.len < GROUP_MAX => {
                    if let Some(split) = layout.location_at(at) {
                        let locations_start = 2 + layout.ids.len();
                        group.insert = Some((at, locations_start + split));
                        group.value = Vec::with_capacity(value.len().max(2) + 64);
                        group.value.extend_from_slice(value);
                    }
                }
                Err(_) => {}
            }
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
        if self.found.is_some() {
            return;
        }
        let Some((at, split)) = self.insert else {
            if self.len >= GROUP_MAX {
                changes.put(spill_key(id), location.to_vec());
            }
            return;
        };
        if self.value.len() < 2 {
            self.value = vec![0, 0]; // new (or unreadable): no entries
            self.len = 0;
        }
        let Ok(n) = u16::try_from(self.len + 1) else {
            return;
        };
        let mut entry = Vec::with_capacity(2 + location.len());
        entry.extend_from_slice(&len.to_be_bytes());
        entry.extend_from_slice(location);
        // The location first: inserting the id shifts everything after it by 16.
        let split = split.max(2).min(self.value.len());
        self.value.splice(split..split, entry);
        let id_at = 2 + at * 16;
        self.value
            .splice(id_at..id_at, id.as_uuid().as_bytes().iter().copied());
        self.value[..2].copy_from_slice(&n.to_be_bytes());
        changes.put(self.key, self.value);
    }
}

/// Where `id` was applied, if it was.
pub fn find(view: &dyn Read, id: &EventId) -> Option<Vec<u8>> {
    Group::read(view, id).find(view, id)
}

#[cfg(test)]
mod tests {
    use chatlog_runtime::testing::Memory;

    use super::*;

    fn id(prefix: u8, n: u32) -> EventId {
        let mut bytes = [prefix; 16];
        bytes[6] = 0x70; // a UUIDv7
        bytes[8] = 0x80;
        bytes[12..].copy_from_slice(&n.to_be_bytes());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        EventId::parse(&text).unwrap()
    }

    fn apply(view: &mut Memory, changes: Changes) {
        for (key, value) in changes.writes {
            match value {
                Some(v) => view.0.insert(key, v),
                None => view.0.remove(&key),
            };
        }
    }

    #[test]
    fn ids_recorded_in_any_order_are_found_with_their_locations() {
        let mut view = Memory::default();
        // Shuffled (a fixed permutation), one group past full, and ids of other groups between.
        let order: Vec<u32> = (0..300u32).map(|i| (i * 7919) % 300).collect();
        for (k, &n) in order.iter().enumerate() {
            for (prefix, id) in [(1u8, id(1, n)), (2, id(2 + (k % 3) as u8, n))] {
                let group = Group::read(&view, &id);
                assert!(group.find(&view, &id).is_none(), "{prefix}/{n} is new");
                let mut changes = Changes::none();
                group.record(&mut changes, &id, format!("at {prefix}/{n}").as_bytes());
                apply(&mut view, changes);
            }
        }
        for n in 0..300u32 {
            assert_eq!(
                find(&view, &id(1, n)).as_deref(),
                Some(format!("at 1/{n}").as_bytes()),
                "id {n} of the full group"
            );
        }
        assert!(find(&view, &id(1, 300)).is_none());
        assert!(find(&view, &id(9, 1)).is_none());
        let spilled = view.0.keys().filter(|k| k.starts_with(b"j/")).count();
        assert_eq!(spilled, 300 - GROUP_MAX, "past the group's size: own keys");
    }

    #[test]
    fn a_random_id_goes_under_its_own_key() {
        let mut view = Memory::default();
        let random = EventId::parse("3f2a9c1e-7b4d-4e8a-9c2b-5d6e7f8a9b0c").unwrap();
        let group = Group::read(&view, &random);
        assert!(group.find(&view, &random).is_none());
        let mut changes = Changes::none();
        group.record(&mut changes, &random, b"here");
        apply(&mut view, changes);
        assert!(view.0.keys().all(|k| k.starts_with(b"j/")));
        assert_eq!(find(&view, &random).as_deref(), Some(b"here".as_slice()));
    }
}
