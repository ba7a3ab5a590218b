//! The edge's access to the log: appends (acknowledged, idempotent, retried within a deadline)
//! and reads of one subject (catch-up, gap filling, `/events`). Everything that touches
//! JetStream goes through [`Log`].

use std::{sync::Arc, time::Duration};

use async_nats::{
    Client,
    connection::State,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        stream::DirectGetErrorKind,
    },
};
use bytes::Bytes;
use chatlog_events::{
    ChatEvent, RoomId, Stream,
    subjects::{self, headers},
};
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// NATS is unreachable or JetStream did not answer in time: retry later with the same id.
    #[error("log unavailable")]
    Unavailable,
    /// An append that required the subject to be empty (or at a given seq) found it was not.
    #[error("wrong last sequence")]
    Conflict,
    #[error("event too large")]
    TooLarge,
    #[error("{0}")]
    Internal(String),
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream sequence: the position in the room's total order.
    pub seq: u64,
    /// The same `Nats-Msg-Id` was stored before; `seq` is that first copy's.
    pub duplicate: bool,
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub body: Bytes,
}

/// The process's bound on JetStream acks in flight (see [`Log::new`]): far above connections ×
/// [`crate::ws::MAX_APPENDS_IN_FLIGHT`].
const MAX_ACKS_IN_FLIGHT: usize = 1 << 24;

/// JetStream, as the edge uses it. Cloned for every append (its ack is awaited apart from the
/// connection): one reference count, not the clients' several.
#[derive(Clone)]
pub struct Log(Arc<Inner>);

struct Inner {
    client: Client,
    js: jetstream::Context,
    /// How long an append or a read may take before the caller hears `unavailable`.
    deadline: Duration,
}

impl Log {
    pub fn new(client: Client, deadline: Duration) -> Self {
        // async-nats bounds the acks in flight per context (5 000 by default) and makes a
        // publish beyond that wait for a permit. A connection whose loop waits there cannot poll
        // its own appends, whose acks would return permits: with NATS slow for a moment and
        // clients pipelining, every connection waited on every other, for good (seen in the
        // bench's open-loop phase: the edge answered `unavailable` until restarted). Appends in
        // flight are bounded per connection instead (`ws::MAX_APPENDS_IN_FLIGHT`, the loop stops
        // reading the socket there), and this bound is one that is never reached; were it
        // reached, the publish would fail at once and be retried, never wait.
        let mut js = jetstream::ContextBuilder::new()
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(false)
            .build(client.clone());
        js.set_timeout(deadline);
        Self(Arc::new(Inner {
            client,
            js,
            deadline,
        }))
    }

    pub fn client(&self) -> &Client {
        &self.0.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.0.js
    }

    /// Whether the NATS connection is up right now.
    pub fn connected(&self) -> bool {
        is_connected(&self.0.client)
    }

    /// Appends `event`; acknowledged means stored. A retry with the same event id is stored once
    /// and answers the first copy's seq.
    pub async fn append(&self, event: &ChatEvent) -> Result<Appended, LogError> {
        self.append_inner(event, None).await
    }

    /// Appends `event` only if its subject's last sequence is `expected` (0: the subject is empty).
    pub async fn append_if_last(
        &self,
        event: &ChatEvent,
        expected: u64,
    ) -> Result<Appended, LogError> {
        self.append_inner(event, Some(expected)).await
    }

    /// Hands `event` to JetStream now, in the caller's order, and answers the rest of the append
    /// (its ack, retried with the same id until the deadline) as a future of its own: a
    /// connection pipelines its appends and they are still stored in the order it sent them.
    pub async fn append_in_order(
        &self,
        event: &ChatEvent,
    ) -> impl Future<Output = Result<Appended, LogError>> + Send + 'static {
        let log = self.clone();
        let until = Instant::now() + self.0.deadline;
        let prepared = self.prepare(event, None);
        let sent = match &prepared {
            Ok(encoded) => Some(self.publish(encoded).await),
            Err(_) => None,
        };
        async move { log.finish(prepared?, sent, until).await }
    }

    async fn append_inner(
        &self,
        event: &ChatEvent,
        expected_last: Option<u64>,
    ) -> Result<Appended, LogError> {
        let until = Instant::now() + self.0.deadline;
        let encoded = self.prepare(event, expected_last)?;
        self.finish(encoded, None, until).await
    }

    fn prepare(
        &self,
        event: &ChatEvent,
        expected_last: Option<u64>,
    ) -> Result<chatlog_events::event::Encoded, LogError> {
        if !self.connected() {
            return Err(LogError::Unavailable);
        }
        let mut encoded = event
            .encode()
            .map_err(|e| LogError::Internal(e.to_string()))?;
        if let Some(expected) = expected_last {
            encoded.headers.insert(
                headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        Ok(encoded)
    }

    /// Hands one attempt of `encoded` to the client (cheap clones: `Bytes`, a header map).
    async fn publish(
        &self,
        encoded: &chatlog_events::event::Encoded,
    ) -> Result<PublishAckFuture, PublishError> {
        self.0
            .js
            .publish_with_headers(
                encoded.subject.clone(),
                encoded.headers.clone(),
                encoded.body.clone(),
            )
            .await
    }

    /// Awaits the ack of `sent` (the first attempt, when already handed over), retrying with the
    /// same `Nats-Msg-Id` until `until`.
    async fn finish(
        &self,
        encoded: chatlog_events::event::Encoded,
        mut sent: Option<Result<PublishAckFuture, PublishError>>,
        until: Instant,
    ) -> Result<Appended, LogError> {
        loop {
            let attempt = async {
                let ack = match sent.take() {
                    Some(handed) => handed?,
                    None => self.publish(&encoded).await?,
                };
                ack.await
            };
            let err = match timeout_at(until, attempt).await {
                Err(_) => return Err(LogError::Unavailable),
                Ok(Ok(ack)) => {
                    return Ok(Appended {
                        seq: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Ok(Err(err)) => err,
            };
            match err.kind() {
                PublishErrorKind::WrongLastSequence => return Err(LogError::Conflict),
                PublishErrorKind::MaxPayloadExceeded => return Err(LogError::TooLarge),
                // A leader election or a reconnect: retry with the same Nats-Msg-Id until the
                // deadline, so the append is stored once whichever attempt lands.
                PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::StreamNotFound
                | PublishErrorKind::MaxAckPending
                | PublishErrorKind::Other => {
                    tracing::debug!(error = %err, subject = %encoded.subject, "append retry");
                    if !self.connected() || Instant::now() + RETRY_PAUSE >= until {
                        return Err(LogError::Unavailable);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                PublishErrorKind::WrongLastMessageId => {
                    return Err(LogError::Internal(err.to_string()));
                }
            }
        }
    }

    /// The last sequence stored on `subject` (0 when it has none).
    pub async fn last_seq(&self, stream: Stream, subject: &str) -> Result<u64, LogError> {
        Ok(self
            .last_message(stream, subject)
            .await?
            .map_or(0, |m| m.seq))
    }

    /// The last sequence stored in `room` (0 when it has nothing): the minimum to ask a view at
    /// for reads that must see every write the room had (`Views::ask_at`).
    pub async fn room_head(&self, room: &RoomId) -> Result<u64, LogError> {
        self.last_seq(Stream::Rooms, &subjects::room(room)).await
    }

    /// The last sequence stored in `stream` (0 when empty): the minimum to ask a view at for
    /// reads across subjects (the room list) that must see every write before them.
    pub async fn stream_head(&self, stream: Stream) -> Result<u64, LogError> {
        if !self.connected() {
            return Err(LogError::Unavailable);
        }
        let handle = self
            .bounded(self.0.js.get_stream(stream.name()))
            .await?
            .map_err(|e| unavailable("reading a stream's state", e))?;
        Ok(handle.cached_info().state.last_sequence)
    }

    /// The last message stored on `subject`.
    pub async fn last_message(
        &self,
        stream: Stream,
        subject: &str,
    ) -> Result<Option<Stored>, LogError> {
        let stream = self.stream(stream).await?;
        self.direct(stream.direct_get_last_for_subject(subject))
            .await
    }

    /// The first message stored on `subject`.
    pub async fn first_message(
        &self,
        stream: Stream,
        subject: &str,
    ) -> Result<Option<Stored>, LogError> {
        let stream = self.stream(stream).await?;
        self.direct(stream.direct_get_first_for_subject(subject))
            .await
    }

    /// A direct get, within the deadline; not found is `None`.
    async fn direct(
        &self,
        get: impl Future<
            Output = Result<
                async_nats::jetstream::message::StreamMessage,
                async_nats::jetstream::stream::DirectGetError,
            >,
        >,
    ) -> Result<Option<Stored>, LogError> {
        crate::metrics::counters::add(&crate::metrics::counters::DIRECT_GETS, 1);
        match self.bounded(get).await? {
            Ok(m) => Ok(Some(Stored {
                seq: m.sequence,
                body: m.payload,
            })),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(direct_get_error(e)),
        }
    }

    /// The messages on `subject` with `from <= seq <= to`, in order, at most `limit` of them.
    /// `to` must not be beyond the subject's last sequence (the read stops at `to`).
    pub async fn read(
        &self,
        stream: Stream,
        subject: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let mut out = Vec::new();
        self.read_each(stream, subject, from, to, limit, |m| {
            out.push(m);
            std::future::ready(true)
        })
        .await?;
        Ok(out)
    }

    /// Like [`Log::read`], handing each message to `each` as it arrives; `each` answering false
    /// stops the read. Batched direct gets read the range (no consumer to create and delete; any
    /// replica answers): a replica that has not stored `to` yet is asked again until the deadline.
    pub async fn read_each<F, Fut>(
        &self,
        stream: Stream,
        subject: &str,
        from: u64,
        to: u64,
        limit: usize,
        mut each: F,
    ) -> Result<usize, LogError>
    where
        F: FnMut(Stored) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut next = from.max(1);
        if next > to || limit == 0 {
            return Ok(0);
        }
        if !self.connected() {
            return Err(LogError::Unavailable);
        }
        // One inbox for the whole read: its batches are asked one after the other.
        let client = &self.0.client;
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("reading", e))?;
        let mut count = 0;
        let mut behind_since: Option<Instant> = None;
        loop {
            let want = (limit - count).min(READ_BATCH);
            let batch = self
                .direct_batch(
                    &mut answers,
                    &inbox,
                    stream.name(),
                    subject,
                    next,
                    want,
                    READ_BATCH_BYTES,
                )
                .await?;
            let got = batch.len();
            for m in batch {
                if m.seq > to {
                    return Ok(count);
                }
                let seq = m.seq;
                count += 1;
                next = seq + 1;
                if !each(m).await || seq == to || count >= limit {
                    return Ok(count);
                }
            }
            if got == 0 {
                // `to` is stored (the caller read it as the head), so this replica is behind.
                let since = *behind_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.0.deadline {
                    return Err(LogError::Unavailable);
                }
                tokio::time::sleep(BEHIND_PAUSE).await;
            } else {
                behind_since = None;
            }
        }
    }

    /// One batched direct get (ADR-31), answered to `inbox` (`answers`): up to `batch` messages
    /// on `subject` of `stream` from seq `from`, at most `max_bytes` of them, ended by the server's
    /// end-of-batch message. None found is an empty batch.
    #[allow(clippy::too_many_arguments)] // one request's fields, as ADR-31 names them
    pub(crate) async fn direct_batch(
        &self,
        answers: &mut async_nats::Subscriber,
        inbox: &str,
        stream: &str,
        subject: &str,
        from: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let request = serde_json::json!({
            "seq": from,
            "next_by_subj": subject,
            "batch": batch,
            "max_bytes": max_bytes,
        });
        crate::metrics::counters::add(&crate::metrics::counters::DIRECT_GETS, 1);
        self.0
            .client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox.to_string(),
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| unavailable("reading", e))?;
        let until = Instant::now() + self.0.deadline;
        let mut out = Vec::new();
        loop {
            let message = match timeout_at(until, answers.next()).await {
                Err(_) | Ok(None) => return Err(LogError::Unavailable),
                Ok(Some(m)) => m,
            };
            match message.status.map(|s| s.as_u16()) {
                None | Some(200) => {}
                // End of batch; or nothing at or after `from`.
                Some(204) | Some(404) => return Ok(out),
                Some(408) | Some(500..=599) => {
                    return Err(unavailable(
                        "a batched direct get",
                        message.description.unwrap_or_default(),
                    ));
                }
                Some(other) => {
                    return Err(LogError::Internal(format!(
                        "direct get answered {other} {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
            let seq = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or_else(|| LogError::Internal("a direct get without its sequence".into()))?;
            out.push(Stored {
                seq,
                body: message.payload,
            });
        }
    }

    /// Whether NATS is reachable and every stream exists, and the files bucket.
    pub async fn ready(&self) -> bool {
        if !self.connected() {
            return false;
        }
        let names = Stream::ALL.map(Stream::name);
        for name in names.iter().chain([&chatlog_events::streams::FILES_STREAM]) {
            match self.bounded(self.0.js.get_stream(*name)).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    }

    async fn stream(&self, stream: Stream) -> Result<jetstream::stream::Stream<()>, LogError> {
        if !self.connected() {
            return Err(LogError::Unavailable);
        }
        self.bounded(self.0.js.get_stream_no_info(stream.name()))
            .await?
            .map_err(|e| unavailable("opening a stream", e))
    }

    /// Runs `fut` within the deadline; running out of time is `Unavailable`.
    async fn bounded<T>(&self, fut: impl Future<Output = T>) -> Result<T, LogError> {
        tokio::time::timeout(self.0.deadline, fut)
            .await
            .map_err(|_| LogError::Unavailable)
    }
}

/// A request JetStream did not answer as asked: during an election, a node's loss or a
/// reconnect that is a moment's unavailability (503 with `Retry-After`), not a server error.
fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    // Debug, not warn: during an election every read lands here, and the edge's NATS state is
    // logged once where it changes.
    tracing::debug!(error = %e, "{what} failed: answering unavailable");
    LogError::Unavailable
}

/// Whether `client` is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Messages per batched direct get, and the bytes the server may send for one (it stops after
/// the message that crosses them): a read of a long range is several requests, none large.
const READ_BATCH: usize = 256;
const READ_BATCH_BYTES: usize = 1 << 20;

/// How long a read waits before asking a replica that is behind again.
const BEHIND_PAUSE: Duration = Duration::from_millis(20);

/// A subject this edge built that the server refuses is a bug; anything else (a timeout, no
/// responder, a 503 while the stream has no leader) is the cluster being unavailable a moment.
fn direct_get_error(e: async_nats::jetstream::stream::DirectGetError) -> LogError {
    match e.kind() {
        DirectGetErrorKind::InvalidSubject => LogError::Internal(e.to_string()),
        _ => unavailable("a direct get", e),
    }
}
