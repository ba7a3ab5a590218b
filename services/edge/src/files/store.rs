//! The files bucket (`CHAT_FILES`, a JetStream Object Store on the stream `OBJ_CHAT_FILES`) as
//! the edge uses it: written and read in the Object Store's own format (chunks on
//! `$O.CHAT_FILES.C.<nuid>`, the object's info on `$O.CHAT_FILES.M.<base64 name>`), so that
//! `nats object` and async-nats' `ObjectStore` read it too, but by hand, for three things the
//! client's `put` cannot do: hash and check the bytes while they arrive, publish an object's
//! info only if its name is still where it was read (content addressing without a race between
//! two uploads of the same bytes), and purge a failed upload's chunks. Reads are batched direct
//! gets, as the log's are: the edge creates no consumer.
//!
//! **Invariants.** An object's info is published only after every one of its chunks was
//! acknowledged, so a visible file is whole; an upload that does not finish purges its chunks
//! (after their acks, so none lands after the purge), whether it fails or its request is
//! dropped; one object per (room, sha256).

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_nats::{
    HeaderMap,
    jetstream::{self, context::PublishAckFuture, context::PublishErrorKind},
};
use bytes::{Bytes, BytesMut};
use chatlog_events::{
    EventId, RoomId, UserId,
    streams::{FILES_BUCKET, FILES_STREAM},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::log::{Log, LogError};

/// The Object Store's chunk size (async-nats' and the nats CLI's default).
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Chunks of one upload published and not yet acknowledged: enough to keep the link busy,
/// few enough that an upload holds at most this many chunks in the client's buffers.
const ACKS_IN_FLIGHT: usize = 8;
/// Chunks asked for per batched direct get when reading, and their bytes.
const READ_CHUNKS: usize = 8;
const READ_BYTES: usize = READ_CHUNKS * CHUNK_SIZE;
/// How long a read waits for a replica that is behind, and between its asks.
const BEHIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
const BEHIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// How often publishing an object's info is tried again when another upload moved it (each
/// conflict is another upload's success: this many uploads of the same bytes at once).
const CAS_TRIES: usize = 32;
/// Most messages one file's info names: every one is asked about in one `current` query when
/// the file is read, and the info must stay far below NATS's largest message.
pub const MAX_MESSAGES: usize = chatlog_events::queries::MAX_CURRENT_IDS;
/// Infos asked for per batched direct get when listing the bucket.
const LIST_BATCH: usize = 256;

/// A file's id: `<room>.<sha256 hex>`. The room is what a download checks access against; the
/// digest makes the same bytes in the same room one file, and an id of another room's file
/// cannot be guessed without its bytes (and would not be served without access to that room).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    room: RoomId,
    sha256: String,
}

impl FileId {
    pub fn new(room: RoomId, sha256: &[u8]) -> Self {
        Self {
            room,
            sha256: hex(sha256),
        }
    }

    /// Parses an id a client gave; `None` when it cannot be one.
    pub fn parse(s: &str) -> Option<Self> {
        let (room, sha256) = s.split_once('.')?;
        let hex_digest = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_digest {
            return None;
        }
        Some(Self {
            room: RoomId::parse(room).ok()?,
            sha256: sha256.to_string(),
        })
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The subject of the object's info.
    fn meta_subject(&self) -> String {
        format!(
            "$O.{FILES_BUCKET}.M.{}",
            base64_url(self.to_string().as_bytes())
        )
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.room, self.sha256)
    }
}

/// A stored file: what the object's info says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub id: FileId,
    /// The name its first uploader gave.
    pub name: String,
    pub size: u64,
    /// A media type's essence (`image/png`), checked against the bytes at upload.
    pub content_type: String,
    /// When it was first uploaded (RFC 3339).
    pub created: String,
    /// Who uploaded it to its room, with when each did first.
    pub uploaders: BTreeMap<UserId, String>,
    /// When it was last uploaded, by anyone (RFC 3339).
    pub uploaded: String,
    /// The messages that attach it, with when each did (RFC 3339): a file is the messages'
    /// while one of them lives, and goes when they are all deleted.
    pub messages: BTreeMap<EventId, String>,
    nuid: String,
    /// The stream seqs of its chunks 0, [`MARK_EVERY`], 2 × [`MARK_EVERY`], …: a read starts at
    /// the mark before its first byte rather than at the stream's start (a `Range` at a large
    /// file's end reads less than a mark's worth it does not send).
    marks: Vec<u64>,
}

/// A chunk's seq is remembered every this many chunks (1 MiB).
const MARK_EVERY: u64 = 8;

#[cfg(test)]
impl FileMeta {
    pub(crate) fn for_tests(id: FileId) -> Self {
        Self {
            id,
            name: "file".into(),
            size: 1,
            content_type: "application/octet-stream".into(),
            created: String::new(),
            uploaders: BTreeMap::new(),
            uploaded: String::new(),
            messages: BTreeMap::new(),
            nuid: String::new(),
            marks: vec![1],
        }
    }
}

/// The Object Store's object info (ADR-20), the fields chatlog writes and reads.
#[derive(Debug, Serialize, Deserialize)]
struct ObjectInfo {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    headers: Option<serde_json::Value>,
    #[serde(default)]
    options: Option<serde_json::Value>,
    bucket: String,
    #[serde(default)]
    nuid: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    chunks: u64,
    #[serde(default)]
    mtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// Metadata keys of the object info.
const NAME: &str = "name";
const CONTENT_TYPE: &str = "content-type";
const CREATED: &str = "created";
const MARKS: &str = "chunk-seqs";
const UPLOADER: &str = "uploader.";
const UPLOADED: &str = "uploaded";
const MESSAGE: &str = "message.";

impl FileMeta {
    /// When a message last attached it (`None`: never, or none it names now).
    pub fn last_attached(&self) -> Option<&str> {
        self.messages.values().map(String::as_str).max()
    }

    /// Whether it was uploaded again since a message last attached it: then it is also a fresh
    /// upload, not only those messages' file (the same bytes uploaded anew would be this file).
    pub fn uploaded_since_attached(&self) -> bool {
        self.last_attached()
            .is_none_or(|attached| time(&self.uploaded) > time(attached))
    }

    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            (NAME.to_string(), self.name.clone()),
            (CONTENT_TYPE.to_string(), self.content_type.clone()),
            (CREATED.to_string(), self.created.clone()),
            (MARKS.to_string(), marks_text(&self.marks)),
            (UPLOADED.to_string(), self.uploaded.clone()),
        ]);
        for (user, at) in &self.uploaders {
            metadata.insert(format!("{UPLOADER}{user}"), at.clone());
        }
        for (message, at) in &self.messages {
            metadata.insert(format!("{MESSAGE}{message}"), at.clone());
        }
        metadata
    }
}

/// An RFC 3339 time as milliseconds since the epoch; one that does not parse is the epoch (the
/// oldest: a sweep does not keep a file for a time it cannot read).
pub fn time(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map_or(0, |t| t.timestamp_millis())
}

impl ObjectInfo {
    fn of(meta: &FileMeta, sha256: &[u8], chunks: u64) -> Self {
        ObjectInfo {
            name: meta.id.to_string(),
            description: None,
            metadata: meta.metadata(),
            headers: None,
            options: Some(serde_json::json!({ "link": null, "max_chunk_size": CHUNK_SIZE })),
            bucket: FILES_BUCKET.to_string(),
            nuid: meta.nuid.clone(),
            size: meta.size,
            chunks,
            mtime: Some(now()),
            digest: Some(format!("SHA-256={}", base64_url(sha256))),
            deleted: false,
        }
    }

    /// The file it describes; `None` for a deleted object or one chatlog did not write.
    fn file(&self) -> Option<FileMeta> {
        if self.deleted {
            return None;
        }
        let id = FileId::parse(&self.name)?;
        let get = |key: &str| self.metadata.get(key).cloned();
        let uploaders: BTreeMap<UserId, String> = self
            .metadata
            .iter()
            .filter_map(|(k, v)| {
                let user = UserId::parse(k.strip_prefix(UPLOADER)?).ok()?;
                Some((user, v.clone()))
            })
            .collect();
        let messages = self
            .metadata
            .iter()
            .filter_map(|(k, v)| {
                let message = EventId::parse(k.strip_prefix(MESSAGE)?).ok()?;
                Some((message, v.clone()))
            })
            .collect();
        let created = get(CREATED).unwrap_or_default();
        // Infos written before `uploaded` was: the latest of its uploaders' first uploads.
        let uploaded = get(UPLOADED)
            .or_else(|| uploaders.values().max_by_key(|at| time(at)).cloned())
            .unwrap_or_else(|| created.clone());
        Some(FileMeta {
            name: get(NAME)?,
            content_type: get(CONTENT_TYPE)?,
            created,
            uploaded,
            messages,
            marks: get(MARKS)
                .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
                .filter(|marks: &Vec<u64>| !marks.is_empty())
                .unwrap_or_else(|| vec![1]),
            uploaders,
            size: self.size,
            nuid: self.nuid.clone(),
            id,
        })
    }
}

/// What [`Files::attach`] did.
pub enum Attach {
    /// The file names the message (now, or already did).
    Attached(Box<FileMeta>),
    /// No such file, or not one the user uploaded.
    NotUploaded,
    /// The file names [`MAX_MESSAGES`] messages already.
    TooMany,
}

/// What [`Files::settle`] is to do with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    Keep,
    /// No longer name these messages.
    Forget(Vec<EventId>),
    Delete,
}

/// What [`Files::settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Kept,
    /// Forgot this many messages.
    Forgot(usize),
    Deleted,
    /// No such file (any more).
    Missing,
}

/// An object's info as last stored, and the seq it is stored at (0: never stored).
struct Found {
    meta: Option<FileMeta>,
    info: Option<ObjectInfo>,
    seq: u64,
}

/// The files bucket. Cheap to clone.
#[derive(Clone)]
pub struct Files {
    log: Log,
    deadline: std::time::Duration,
}

impl Files {
    pub fn new(log: Log, deadline: std::time::Duration) -> Self {
        Self { log, deadline }
    }

    fn js(&self) -> &jetstream::Context {
        self.log.jetstream()
    }

    async fn bounded<T>(&self, fut: impl IntoFuture<Output = T>) -> Result<T, LogError> {
        tokio::time::timeout(self.deadline, fut.into_future())
            .await
            .map_err(|_| LogError::Unavailable)
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, LogError> {
        if !self.log.connected() {
            return Err(LogError::Unavailable);
        }
        self.bounded(self.js().get_stream_no_info(FILES_STREAM))
            .await?
            .map_err(|e| unavailable("opening the files bucket", e))
    }

    /// The file `id`, if it is stored.
    pub async fn get(&self, id: &FileId) -> Result<Option<FileMeta>, LogError> {
        Ok(self.find(id, false).await?.meta)
    }

    /// `id`'s info as last stored. A direct get (any replica answers) first; when it finds
    /// nothing, or `for_update`, the stream's leader is asked: a replica that is behind must not
    /// make a file just stored look missing, nor an update compare with an old seq.
    async fn find(&self, id: &FileId, for_update: bool) -> Result<Found, LogError> {
        let stream = self.stream().await?;
        let subject = id.meta_subject();
        let mut message = None;
        if !for_update {
            crate::metrics::counters::add(&crate::metrics::counters::DIRECT_GETS, 1);
            match self
                .bounded(stream.direct_get_last_for_subject(subject.as_str()))
                .await?
            {
                Ok(m) => message = Some(m),
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("reading a file's info", e)),
            }
        }
        let message = match message {
            Some(m) => m,
            None => match self
                .bounded(stream.get_last_raw_message_by_subject(&subject))
                .await?
            {
                Ok(m) => m,
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    return Ok(Found {
                        meta: None,
                        info: None,
                        seq: 0,
                    });
                }
                Err(e) => return Err(unavailable("reading a file's info", e)),
            },
        };
        let info: Option<ObjectInfo> = serde_json::from_slice(&message.payload).ok();
        if info.is_none() {
            tracing::warn!(file = %id, "a file's info is not an object info");
        }
        Ok(Found {
            meta: info.as_ref().and_then(ObjectInfo::file),
            info,
            seq: message.sequence,
        })
    }

    /// Publishes `info` as `id`'s, only if the last one stored is at `expected` (0: none).
    async fn publish_info(
        &self,
        id: &FileId,
        info: &ObjectInfo,
        expected: u64,
    ) -> Result<(), LogError> {
        let body = serde_json::to_vec(info).map_err(|e| LogError::Internal(e.to_string()))?;
        let mut headers = HeaderMap::new();
        // The Object Store keeps the last info per object only.
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let ack = self
            .bounded(
                self.js()
                    .publish_with_headers(id.meta_subject(), headers, body.into()),
            )
            .await?
            .map_err(|e| unavailable("publishing a file's info", e))?;
        match self.bounded(ack).await? {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(LogError::Conflict),
            Err(e) => Err(unavailable("publishing a file's info", e)),
        }
    }

    /// Deletes file `id` (its info marked deleted, its chunks purged), as the Object Store
    /// deletes. Deleting a file that is not there does nothing.
    pub async fn delete(&self, id: &FileId) -> Result<(), LogError> {
        self.settle(id, |_| async { Ok::<_, LogError>(Settle::Delete) })
            .await
            .map(|_| ())
    }

    /// Attaches file `id` to `message` if `user` uploaded it: the file then names the message
    /// (a retried send with the same message id names it once).
    pub async fn attach(
        &self,
        id: &FileId,
        user: &UserId,
        message: EventId,
    ) -> Result<Attach, LogError> {
        for _ in 0..CAS_TRIES {
            let found = self.find(id, true).await?;
            let Some(mut meta) = found
                .meta
                .clone()
                .filter(|m| m.uploaders.contains_key(user))
            else {
                return Ok(Attach::NotUploaded);
            };
            if meta.messages.contains_key(&message) {
                return Ok(Attach::Attached(Box::new(meta)));
            }
            if meta.messages.len() >= MAX_MESSAGES {
                return Ok(Attach::TooMany);
            }
            meta.messages.insert(message, now());
            match self.republish(id, found, &meta).await {
                Ok(()) => return Ok(Attach::Attached(Box::new(meta))),
                Err(LogError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LogError::Unavailable)
    }

    /// Decides what becomes of file `id` as last stored (`decide`), and does it only if the file
    /// is still as decided on: when another edge changed it in between, it is read and decided
    /// again. So any number of edges may settle the same file at once.
    pub async fn settle<E, F, Fut>(&self, id: &FileId, mut decide: F) -> Result<Settled, E>
    where
        E: From<LogError>,
        F: FnMut(FileMeta) -> Fut,
        Fut: Future<Output = Result<Settle, E>>,
    {
        for _ in 0..CAS_TRIES {
            let found = self.find(id, true).await?;
            let Some(meta) = found.meta.clone() else {
                return Ok(Settled::Missing);
            };
            let outcome = match decide(meta.clone()).await? {
                Settle::Keep => return Ok(Settled::Kept),
                Settle::Forget(messages) => {
                    let mut meta = meta;
                    let before = meta.messages.len();
                    meta.messages.retain(|m, _| !messages.contains(m));
                    if meta.messages.len() == before {
                        return Ok(Settled::Kept);
                    }
                    let forgot = before - meta.messages.len();
                    self.republish(id, found, &meta)
                        .await
                        .map(|()| Settled::Forgot(forgot))
                }
                Settle::Delete => self
                    .delete_found(id, found)
                    .await
                    .map(|()| Settled::Deleted),
            };
            match outcome {
                Ok(settled) => return Ok(settled),
                Err(LogError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LogError::Unavailable.into())
    }

    /// Publishes `meta` as `id`'s info in place of `found`, only if that is still the last.
    async fn republish(&self, id: &FileId, found: Found, meta: &FileMeta) -> Result<(), LogError> {
        let Some(mut info) = found.info else {
            return Err(LogError::Conflict);
        };
        info.metadata = meta.metadata();
        info.mtime = Some(now());
        self.publish_info(id, &info, found.seq).await
    }

    /// Marks `found` deleted (only if it is still the last info) and purges its chunks.
    async fn delete_found(&self, id: &FileId, found: Found) -> Result<(), LogError> {
        let Some(mut info) = found.info.filter(|i| !i.deleted) else {
            return Ok(());
        };
        let nuid = std::mem::take(&mut info.nuid);
        info.deleted = true;
        info.size = 0;
        info.chunks = 0;
        info.mtime = Some(now());
        info.nuid = nuid.clone();
        self.publish_info(id, &info, found.seq).await?;
        self.purge_chunks(&nuid).await
    }

    /// Every file in the bucket, as listed from the infos' subjects by batched direct gets (no
    /// consumer): each file's last info (the others were rolled up), deleted ones left out.
    pub async fn list(&self) -> Result<Vec<FileMeta>, LogError> {
        if !self.log.connected() {
            return Err(LogError::Unavailable);
        }
        let client = self.log.client();
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("listing the files", e))?;
        let subject = format!("$O.{FILES_BUCKET}.M.>");
        let (mut next, mut out) = (1, Vec::new());
        loop {
            let batch = self
                .log
                .direct_batch(
                    &mut answers,
                    &inbox,
                    FILES_STREAM,
                    &subject,
                    next,
                    LIST_BATCH,
                    READ_BYTES,
                )
                .await?;
            let Some(last) = batch.last() else {
                return Ok(out);
            };
            next = last.seq + 1;
            out.extend(batch.iter().filter_map(|m| {
                serde_json::from_slice::<ObjectInfo>(&m.body)
                    .ok()
                    .as_ref()
                    .and_then(ObjectInfo::file)
            }));
        }
    }

    async fn purge_chunks(&self, nuid: &str) -> Result<(), LogError> {
        let stream = self.stream().await?;
        self.bounded(stream.purge().filter(chunk_subject(nuid)))
            .await?
            .map(|_| ())
            .map_err(|e| unavailable("purging a file's chunks", e))
    }

    /// A new upload: its chunks are written as they come, its object named once they are all
    /// stored ([`Upload::finish`]).
    pub fn upload(&self) -> Upload {
        let nuid = uuid::Uuid::new_v4().simple().to_string();
        Upload {
            files: self.clone(),
            subject: chunk_subject(&nuid),
            nuid,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
            hasher: Sha256::new(),
            size: 0,
            chunks: 0,
            marks: Vec::new(),
            acked: 0,
            pending: VecDeque::new(),
            settled: false,
        }
    }

    /// The bytes `start..end` of `file`, read chunk by chunk as the consumer asks for them (a
    /// batch of [`READ_CHUNKS`] at a time): never the whole file in memory.
    pub fn read(
        &self,
        file: &FileMeta,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        // The last mark at or before `start` (each mark begins MARK_EVERY chunks, chunks being
        // CHUNK_SIZE but the last).
        let chunk = start / CHUNK_SIZE as u64;
        let mark = usize::try_from(chunk / MARK_EVERY)
            .unwrap_or(usize::MAX)
            .min(file.marks.len().saturating_sub(1));
        let reading = Reading {
            log: self.log.clone(),
            subject: chunk_subject(&file.nuid),
            next_seq: file.marks.get(mark).copied().unwrap_or(1).max(1),
            pos: mark as u64 * MARK_EVERY * CHUNK_SIZE as u64,
            start,
            end: end.min(file.size),
            answers: None,
            queue: VecDeque::new(),
            done: false,
            behind_since: None,
        };
        futures::stream::unfold(reading, |mut r| async move {
            let next = r.next().await?;
            Some((next, r))
        })
    }
}

/// A read in progress ([`Files::read`]).
struct Reading {
    log: Log,
    subject: String,
    next_seq: u64,
    /// The offset of the next chunk's first byte.
    pos: u64,
    start: u64,
    end: u64,
    answers: Option<(String, async_nats::Subscriber)>,
    queue: VecDeque<Bytes>,
    done: bool,
    /// Since when the replica answering has had none of the chunks still to read.
    behind_since: Option<tokio::time::Instant>,
}

impl Reading {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(bytes) = self.queue.pop_front() {
                crate::metrics::counters::add(
                    &crate::metrics::counters::FILE_BYTES_OUT,
                    bytes.len() as u64,
                );
                return Some(Ok(bytes));
            }
            if self.done || self.pos >= self.end {
                return None;
            }
            match self.batch().await {
                Ok(()) => {}
                Err(e) => {
                    // The answer's head is sent: all that is left is to cut the body short.
                    self.done = true;
                    tracing::warn!(error = %e, subject = %self.subject, "reading a file failed");
                    return Some(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }

    async fn batch(&mut self) -> Result<(), LogError> {
        if self.answers.is_none() {
            let client = self.log.client();
            let inbox = client.new_inbox();
            let subscriber = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| unavailable("reading a file", e))?;
            self.answers = Some((inbox, subscriber));
        }
        let Some((inbox, answers)) = self.answers.as_mut() else {
            return Err(LogError::Unavailable);
        };
        let batch = self
            .log
            .direct_batch(
                answers,
                inbox,
                FILES_STREAM,
                &self.subject,
                self.next_seq,
                READ_CHUNKS,
                READ_BYTES,
            )
            .await?;
        if batch.is_empty() {
            // Every chunk was stored before the info that named them: a replica that has not
            // got them yet is behind, and is asked again for a while.
            let since = *self
                .behind_since
                .get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= BEHIND_PATIENCE {
                return Err(LogError::Internal(
                    "a file's chunks end before its size".into(),
                ));
            }
            tokio::time::sleep(BEHIND_PAUSE).await;
            return Ok(());
        }
        self.behind_since = None;
        for chunk in batch {
            self.next_seq = chunk.seq + 1;
            let len = chunk.body.len() as u64;
            let (from, to) = (self.pos, self.pos + len);
            self.pos = to;
            let (lo, hi) = (self.start.max(from), self.end.min(to));
            if lo < hi {
                self.queue
                    .push_back(chunk.body.slice((lo - from) as usize..(hi - from) as usize));
            }
            if self.pos >= self.end {
                break;
            }
        }
        Ok(())
    }
}

/// An upload being written: bytes in, hashed and published a chunk at a time. Dropped before
/// [`Upload::finish`] or [`Upload::abort`] (the request was cancelled: its client went away),
/// its chunks are purged by a task of their own.
pub struct Upload {
    files: Files,
    nuid: String,
    subject: String,
    buffer: BytesMut,
    hasher: Sha256,
    size: u64,
    chunks: u64,
    /// The seqs of the chunks acknowledged so far every [`MARK_EVERY`], and how many were.
    marks: Vec<u64>,
    acked: u64,
    pending: VecDeque<PublishAckFuture>,
    /// Finished or aborted: nothing left to purge on drop.
    settled: bool,
}

impl Upload {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes `data`: hashed now, published once a chunk is full.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), LogError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_SIZE - self.buffer.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = rest;
            if self.buffer.len() == CHUNK_SIZE {
                self.publish_chunk().await?;
            }
        }
        Ok(())
    }

    async fn publish_chunk(&mut self) -> Result<(), LogError> {
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK_SIZE);
        let files = self.files.clone();
        let ack = files
            .bounded(files.js().publish(self.subject.clone(), chunk))
            .await?
            .map_err(|e| unavailable("publishing a file's chunk", e))?;
        self.chunks += 1;
        self.pending.push_back(ack);
        while self.pending.len() >= ACKS_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), LogError> {
        let Some(ack) = self.pending.pop_front() else {
            return Ok(());
        };
        let files = self.files.clone();
        let ack = files
            .bounded(ack)
            .await?
            .map_err(|e| unavailable("storing a file's chunk", e))?;
        // Acks come in the order the chunks were published.
        if self.acked % MARK_EVERY == 0 {
            self.marks.push(ack.sequence);
        }
        self.acked += 1;
        Ok(())
    }

    /// Publishes what is buffered and waits for every chunk's ack.
    async fn flush(&mut self) -> Result<(), LogError> {
        if !self.buffer.is_empty() {
            self.publish_chunk().await?;
        }
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Stores the upload as the file `(room, sha256)`: a new object, or, when the room has
    /// these bytes already, the existing one (this upload's chunks purged) with `user` among
    /// its uploaders. Returns the file as stored.
    pub async fn finish(
        mut self,
        room: &RoomId,
        user: &UserId,
        name: String,
        content_type: String,
    ) -> Result<FileMeta, LogError> {
        if let Err(e) = self.flush().await {
            self.abort().await;
            return Err(e);
        }
        let digest = std::mem::take(&mut self.hasher).finalize();
        let id = FileId::new(room.clone(), &digest);
        let at = now();
        let ours = FileMeta {
            id: id.clone(),
            name,
            size: self.size,
            content_type,
            created: at.clone(),
            uploaders: BTreeMap::from([(user.clone(), at.clone())]),
            uploaded: at.clone(),
            messages: BTreeMap::new(),
            nuid: self.nuid.clone(),
            marks: self.marks.clone(),
        };
        let files = self.files.clone();
        for _ in 0..CAS_TRIES {
            let found = match files.find(&id, true).await {
                Ok(found) => found,
                Err(e) => {
                    self.abort().await;
                    return Err(e);
                }
            };
            let outcome = match found.meta {
                // Stored once: this upload's chunks go, its uploader is remembered.
                Some(mut existing) => {
                    if !self.settled {
                        self.abort().await;
                    }
                    // Uploaded again, by a new uploader or not: when it was matters to whether it
                    // outlives the messages that attached it (`FileMeta::uploaded_since_attached`).
                    existing
                        .uploaders
                        .entry(user.clone())
                        .or_insert_with(|| at.clone());
                    existing.uploaded = at.clone();
                    let info = ObjectInfo::of(&existing, &digest, chunks_of(existing.size));
                    files
                        .publish_info(&id, &info, found.seq)
                        .await
                        .map(|()| existing)
                }
                None => {
                    let info = ObjectInfo::of(&ours, &digest, self.chunks);
                    files
                        .publish_info(&id, &info, found.seq)
                        .await
                        .map(|()| ours.clone())
                }
            };
            match outcome {
                Ok(meta) => {
                    self.settled = true;
                    return Ok(meta);
                }
                // Another upload of the same bytes (or of an uploader) got there first: again.
                Err(LogError::Conflict) => continue,
                Err(e) => {
                    if !self.settled {
                        self.abort().await;
                    }
                    return Err(e);
                }
            }
        }
        if !self.settled {
            self.abort().await;
        }
        Err(LogError::Unavailable)
    }

    /// Purges what was written, once every chunk in flight was acknowledged (or failed).
    pub async fn abort(&mut self) {
        self.settled = true;
        let pending = std::mem::take(&mut self.pending);
        if self.chunks > 0 {
            purge_after(self.files.clone(), self.nuid.clone(), pending).await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.settled || self.chunks == 0 {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let (files, nuid) = (self.files.clone(), self.nuid.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(purge_after(files, nuid, pending));
        }
    }
}

/// Waits for the chunks in flight (so that none is stored after the purge), then purges them
/// all.
async fn purge_after(files: Files, nuid: String, pending: VecDeque<PublishAckFuture>) {
    for ack in pending {
        let _ = files.bounded(ack).await;
    }
    if let Err(e) = files.purge_chunks(&nuid).await {
        // Chunks without an info are no file: nothing shows them, `chatlog files` lists
        // objects. They only take space until the purge is done by hand.
        tracing::warn!(error = %e, nuid, "purging a failed upload's chunks failed");
    }
}

fn marks_text(marks: &[u64]) -> String {
    marks
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn chunk_subject(nuid: &str) -> String {
    format!("$O.{FILES_BUCKET}.C.{nuid}")
}

fn chunks_of(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE as u64)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    tracing::debug!(error = %e, "{what}");
    LogError::Unavailable
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Base64 with the URL-safe alphabet and padding, as the Object Store encodes names and
/// digests.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_room_and_digest_and_nothing_else_parses() {
        let room = RoomId::parse("lobby").unwrap();
        let id = FileId::new(room.clone(), &[0xab; 32]);
        let text = id.to_string();
        assert_eq!(text, format!("lobby.{}", "ab".repeat(32)));
        assert_eq!(FileId::parse(&text), Some(id));
        for bad in [
            "lobby",
            "lobby.",
            "Lobby.",
            &format!("lobby.{}", "AB".repeat(32)),
            &format!("lobby.{}", "ab".repeat(31)),
            &format!("../x.{}", "ab".repeat(32)),
            &format!("lobby.{}.x", "ab".repeat(32)),
        ] {
            assert_eq!(FileId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64_is_the_object_stores() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg==");
        assert_eq!(base64_url(b"fo"), "Zm8=");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
    }
}
