//! A view: a sled database holding the projection's keys and, under a reserved prefix, the
//! checkpoint (the last applied stream sequence) and the view's format version. View changes and
//! the checkpoint are written in one sled batch, so they cannot disagree.
//!
//! The view is disposable: when sled cannot open it, or it was written by another format
//! version, it is wiped (with a log line saying so) and rebuilt from the log.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::Changes;

/// Keys of the runtime's own bookkeeping; projections' keys never start with 0xff.
const META: &[u8] = b"\xffmeta/";
const CHECKPOINT: &[u8] = b"\xffmeta/checkpoint";
const VERSION: &[u8] = b"\xffmeta/version";

/// Read access to a view, as a projection sees it.
pub trait Read {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;

    /// Calls `f` with the value of `key`, lent rather than copied where the view can: a
    /// projection that scans a value or copies it to grow it pays one copy, not two.
    fn with(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) {
        f(self.get(key).as_deref());
    }
}

/// A copy of the value of `key` with room for `extra` more bytes: for values that grow.
pub fn get_to_grow(view: &dyn Read, key: &[u8], extra: usize) -> Option<Vec<u8>> {
    let mut out = None;
    view.with(key, &mut |value| {
        out = value.map(|v| {
            let mut copy = Vec::with_capacity(v.len() + extra);
            copy.extend_from_slice(v);
            copy
        });
    });
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("view directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the view at {0} is in use by another process (a running handler?)")]
    Locked(PathBuf),
}

pub struct View {
    db: sled::Db,
    path: PathBuf,
}

impl View {
    /// Opens the view at `path`, wiping it when it is unreadable or of another `version`.
    pub fn open(path: &Path, name: &str, version: u32) -> Result<View, ViewError> {
        let db = match open_unlocked(path) {
            Ok(db) => db,
            // Another process has it open: never wipe a view in use.
            Err(e) if is_locked(&e) => return Err(ViewError::Locked(path.to_path_buf())),
            Err(e) => {
                tracing::warn!(view = name, error = %e, path = %path.display(),
                    "view unreadable, wiping it to rebuild from the log");
                if path.exists() {
                    std::fs::remove_dir_all(path)?;
                }
                open_sled(path)?
            }
        };
        let view = View {
            db,
            path: path.to_path_buf(),
        };
        let stored = view.db.get(VERSION)?.map(|v| read_u64(&v));
        if stored != Some(u64::from(version)) {
            if stored.is_some() || !view.db.is_empty() {
                tracing::warn!(view = name, stored = ?stored, version,
                    "view format changed, wiping it to rebuild from the log");
            }
            view.db.clear()?;
            view.db.insert(VERSION, &u64::from(version).to_be_bytes())?;
            view.db.flush()?;
        }
        Ok(view)
    }

    /// Forgets everything but the format version: the next run rebuilds from the start.
    pub fn wipe(&self) -> Result<(), ViewError> {
        let version = self.db.get(VERSION)?;
        self.db.clear()?;
        if let Some(v) = version {
            self.db.insert(VERSION, v)?;
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last stream sequence applied (0: nothing yet).
    pub fn checkpoint(&self) -> Result<u64, ViewError> {
        Ok(self.db.get(CHECKPOINT)?.map_or(0, |v| read_u64(&v)))
    }

    /// The sled tree, for queries (ranges, prefixes).
    pub fn tree(&self) -> &sled::Tree {
        &self.db
    }

    /// Writes `pending` and the checkpoint in one atomic batch.
    pub fn commit(&self, pending: &mut Pending, checkpoint: u64) -> Result<(), ViewError> {
        let mut batch = sled::Batch::default();
        for (key, value) in std::mem::take(&mut pending.writes) {
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        batch.insert(CHECKPOINT, &checkpoint.to_be_bytes());
        self.db.apply_batch(batch)?;
        pending.events = 0;
        Ok(())
    }

    /// Makes committed batches durable now (sled also does it on its own every 500 ms).
    pub fn flush(&self) -> Result<(), ViewError> {
        self.db.flush()?;
        Ok(())
    }

    /// A hash of every key and value of the view (not the checkpoint): two views with the same
    /// content have the same checksum, whatever order they were written in.
    pub fn checksum(&self) -> Result<u64, ViewError> {
        let mut hash = Fnv::new();
        for entry in self.db.iter() {
            let (key, value) = entry?;
            if key.starts_with(META) {
                continue;
            }
            hash.write(&(key.len() as u64).to_be_bytes());
            hash.write(&key);
            hash.write(&(value.len() as u64).to_be_bytes());
            hash.write(&value);
        }
        Ok(hash.finish())
    }
}

impl Read for View {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_ivec(key).map(|v| v.to_vec())
    }

    fn with(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) {
        f(self.get_ivec(key).as_deref());
    }
}

impl View {
    fn get_ivec(&self, key: &[u8]) -> Option<sled::IVec> {
        match self.db.get(key) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "view read failed");
                None
            }
        }
    }
}

/// Changes applied but not committed yet. Reads see them first, so the events of one batch see
/// each other's effects.
#[derive(Default)]
pub struct Pending {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Events applied since the last commit.
    pub events: usize,
}

impl Pending {
    pub fn add(&mut self, changes: Changes) {
        for (key, value) in changes.writes {
            self.writes.insert(key, value);
        }
        self.events += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }
}

/// A view as a projection sees it mid-batch: pending changes over the committed view.
pub struct Overlay<'a> {
    pub view: &'a View,
    pub pending: &'a Pending,
}

impl Read for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.writes.get(key) {
            Some(v) => v.clone(),
            None => self.view.get(key),
        }
    }

    fn with(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) {
        match self.pending.writes.get(key) {
            Some(v) => f(v.as_deref()),
            None => self.view.with(key, f),
        }
    }
}

/// How long [`open_unlocked`] waits for a view's lock (a view of this process being closed still
/// holds it while sled's background thread ends).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// [`open_sled`], waiting up to [`LOCK_WAIT`] while the view is locked. sled offers nothing to
/// wait on, so it tries again every 20 ms.
fn open_unlocked(path: &Path) -> sled::Result<sled::Db> {
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_sled(path) {
            Err(e) if is_locked(&e) && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Whether sled refused `path` because another open of it holds its lock. sled reports that as
/// an `Other` I/O error naming the lock, not `WouldBlock`: matched on `WouldBlock` alone, a
/// locked view counted as unreadable and was wiped under its user.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
}

/// sled with a cache that holds a busy view.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(256 * 1024 * 1024)
        .open()
}

fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// FNV-1a's 64-bit constants over 8-byte little-endian words (the tail byte by byte): stable
/// across runs and platforms (unlike std's hasher), and a word at a time, because a rebuild ends
/// with the checksum of the whole view.
struct Fnv(u64);

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.0 = (self.0 ^ u64::from_le_bytes(w)).wrapping_mul(FNV_PRIME);
        }
        for b in words.remainder() {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_checkpoint_commit_together_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        {
            let view = View::open(&path, "t", 1).unwrap();
            let mut pending = Pending::default();
            let mut c = Changes::none();
            c.put(b"a".to_vec(), b"1".to_vec());
            pending.add(c);
            assert_eq!(
                Overlay {
                    view: &view,
                    pending: &pending
                }
                .get(b"a"),
                Some(b"1".to_vec()),
                "pending changes are visible before the commit"
            );
            assert_eq!(view.get(b"a"), None);
            view.commit(&mut pending, 7).unwrap();
            view.flush().unwrap();
        }
        let view = View::open(&path, "t", 1).unwrap();
        assert_eq!(view.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(view.checkpoint().unwrap(), 7);
    }

    /// A view (format `version`) at `path` holding `a` = `1`, committed at `checkpoint` and
    /// flushed.
    fn with_a_committed(path: &Path, version: u32, checkpoint: u64) -> View {
        let view = View::open(path, "t", version).unwrap();
        let mut pending = Pending::default();
        let mut c = Changes::none();
        c.put(b"a".to_vec(), b"1".to_vec());
        pending.add(c);
        view.commit(&mut pending, checkpoint).unwrap();
        view.flush().unwrap();
        view
    }

    #[test]
    fn a_view_open_elsewhere_is_refused_as_locked_and_never_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let view = with_a_committed(&path, 1, 7);

        // A second open of the same directory (another handler, `views rebuild`) while it is
        // held: sled's lock refuses it.
        match View::open(&path, "t", 1) {
            Err(ViewError::Locked(p)) => assert_eq!(p, path),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a view open elsewhere was opened again"),
        }
        assert_eq!(view.get(b"a"), Some(b"1".to_vec()), "nothing wiped");
        drop(view);
        let view = View::open(&path, "t", 1).unwrap();
        assert_eq!(view.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(view.checkpoint().unwrap(), 7);
    }

    #[test]
    fn a_new_format_version_wipes_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        drop(with_a_committed(&path, 1, 3));
        let view = View::open(&path, "t", 2).unwrap();
        assert_eq!(view.get(b"a"), None);
        assert_eq!(view.checkpoint().unwrap(), 0);
    }

    #[test]
    fn an_unreadable_view_is_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("conf"), b"garbage that is not a sled config").unwrap();
        std::fs::write(path.join("db"), b"garbage").unwrap();
        let view = View::open(&path, "t", 1).unwrap();
        assert_eq!(view.checkpoint().unwrap(), 0);
    }

    #[test]
    fn the_checksum_ignores_the_checkpoint_and_write_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = View::open(&dir.path().join("a"), "t", 1).unwrap();
        let b = View::open(&dir.path().join("b"), "t", 1).unwrap();
        let mut pa = Pending::default();
        let mut pb = Pending::default();
        let mut c1 = Changes::none();
        c1.put(b"x".to_vec(), b"1".to_vec());
        let mut c2 = Changes::none();
        c2.put(b"y".to_vec(), b"2".to_vec());
        pa.add(c1.clone());
        pa.add(c2.clone());
        a.commit(&mut pa, 10).unwrap();
        pb.add(c2);
        b.commit(&mut pb, 5).unwrap();
        pb.add(c1);
        b.commit(&mut pb, 20).unwrap();
        assert_eq!(a.checksum().unwrap(), b.checksum().unwrap());
        let mut c3 = Changes::none();
        c3.delete(b"x".to_vec());
        pb.add(c3);
        b.commit(&mut pb, 21).unwrap();
        assert_ne!(a.checksum().unwrap(), b.checksum().unwrap());
    }
}
