//! `chatlog-runtime`: the host of chatlog's small stateless handlers.
//!
//! A handler is a [`Projection`]: a pure function from the view and one decoded event to the
//! view's [`Changes`] (and derived events to append). The runtime does all the I/O around it
//! ([`host`]): it reads the handler's stream from the view's checkpoint with an ordered consumer,
//! applies events in order, writes the view changes and the new checkpoint in one sled batch
//! ([`view`]), appends derived events before that batch (their ids are deterministic, so a retry
//! is stored once), and answers the view's queries as a NATS micro service in a queue group.
//! Kill it anywhere: it resumes after the last committed checkpoint, and the view equals a fresh
//! rebuild (exactly-once effect over at-least-once delivery).

pub mod host;
pub mod marks;
pub mod testing;
pub mod view;

use chatlog_events::{ChatEvent, Stream};
use serde::{Serialize, de::DeserializeOwned};

pub use host::{HostConfig, HostError, HostStats, SharedReaders, Stopping, rebuild, run};
pub use view::{Read, View, ViewError, get_to_grow};

/// A view of the log, kept by the runtime.
pub trait Projection: Send + Sync + 'static {
    /// The view's name: its service is `views.<name>.*`, its directory `<views>/<name>`.
    fn name(&self) -> &'static str;
    /// The view's stored format. A view written by another version is wiped and rebuilt.
    fn version(&self) -> u32;
    /// The stream the view is a projection of.
    fn stream(&self) -> Stream;
    /// What `event`, stored at `seq`, changes in the view. Pure: no I/O, no clock, no randomness
    /// (the time is the event's); applying an event already applied must change nothing.
    fn apply(&self, view: &dyn Read, seq: u64, event: &ChatEvent) -> Changes;
    /// The queries the view answers (beside `checksum`, which every view answers).
    fn queries(&self) -> &'static [&'static str];
    /// Answers `query` with a JSON body.
    fn query(&self, view: &View, query: &str, request: &[u8]) -> Result<Vec<u8>, QueryError>;

    /// Events that the passing of time causes (a heartbeat that never came, a typing flag that
    /// ran out), given the view and the wall clock `now`. The host calls it every
    /// [`HostConfig::tick`] once the view has caught up, and appends what it returns; their ids
    /// must be deterministic so that replicas and retries store them once.
    fn tick(&self, _view: &View, _now: chrono::DateTime<chrono::Utc>) -> Vec<ChatEvent> {
        Vec::new()
    }
}

pub use chatlog_events::queries::MIN_SEQ_HEADER;

/// What one event changes: puts and deletes on the view, and derived events to append.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// `None` deletes the key.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Derived events; their ids must be deterministic (see `EventId::derived`).
    pub emit: Vec<ChatEvent>,
}

impl Changes {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    /// Puts `value` as JSON.
    pub fn put_json<T: Serialize>(&mut self, key: impl Into<Vec<u8>>, value: &T) {
        // Serializing plain view structs cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.put(key, bytes);
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.emit.is_empty()
    }
}

/// The key under which a projection records that it applied event `id` (`i/<uuid bytes>`): an
/// event id seen twice is applied once.
pub fn event_key(id: &chatlog_events::EventId) -> Vec<u8> {
    let mut key = b"i/".to_vec();
    key.extend_from_slice(id.as_uuid().as_bytes());
    key
}

/// Reads `key` as JSON; a missing or unreadable value is `None`.
pub fn get_json<T: DeserializeOwned>(view: &dyn Read, key: &[u8]) -> Option<T> {
    view.get(key).and_then(|v| serde_json::from_slice(&v).ok())
}

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl QueryError {
    /// The code carried by the service error header: HTTP-like.
    pub fn code(&self) -> usize {
        match self {
            QueryError::BadRequest(_) => 400,
            QueryError::NotFound(_) => 404,
            QueryError::Internal(_) => 500,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            QueryError::BadRequest(m) | QueryError::NotFound(m) | QueryError::Internal(m) => m,
        }
    }
}

/// Parses a query's JSON request.
pub fn parse_request<T: DeserializeOwned>(request: &[u8]) -> Result<T, QueryError> {
    serde_json::from_slice(request).map_err(|e| QueryError::BadRequest(e.to_string()))
}

/// Serializes a query's JSON answer.
pub fn answer<T: Serialize>(value: &T) -> Result<Vec<u8>, QueryError> {
    serde_json::to_vec(value).map_err(|e| QueryError::Internal(e.to_string()))
}
