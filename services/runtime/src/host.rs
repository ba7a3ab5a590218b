//! The shell around a projection: consume, decode, apply, commit, answer queries.
//!
//! [`run`] keeps a view up to date for as long as the process lives and serves its queries;
//! [`rebuild`] wipes a view and applies the stream up to its current last sequence, reporting
//! progress. Both use [`consume`]: an ordered consumer from the checkpoint + 1, events applied in
//! order into [`Pending`], committed with the checkpoint every `batch` events, whenever the
//! stream goes quiet, and at the latest `max_delay` after the first pending change. An event that
//! does not decode is logged with its seq, counted and skipped: it never blocks the view.

use std::{
    collections::HashMap,
    fmt::Write as _,
    future::Future,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use async_nats::{
    Client,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull::OrderedConfig},
    },
    service::ServiceExt,
};
use bytes::Bytes;
use chatlog_events::{
    ChatEvent,
    queries::{self, ChecksumAnswer},
};
use futures::StreamExt;

use crate::{
    Projection, QueryError,
    marks::{Emitter, MARKS_PATIENCE},
    view::{Overlay, Pending, View, ViewError},
};

/// How a handler runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The view's sled directory.
    pub view_dir: PathBuf,
    /// Events applied per sled batch at most.
    pub batch: usize,
    /// Commit what is pending when no event came for this long.
    pub idle_commit: Duration,
    /// Commit what is pending when its first change has waited this long, however busy the
    /// stream: queries read what is committed, and a steady trickle (an event every 10 ms, say)
    /// never leaves `idle_commit` of quiet, so without this bound its changes would wait for a
    /// full `batch`.
    pub max_delay: Duration,
    /// How often [`Projection::tick`] runs.
    pub tick: Duration,
    /// Read the stream through these readers, shared with the process's other views of the same
    /// stream, instead of with a consumer of the view's own.
    pub shared: Option<SharedReaders>,
}

impl HostConfig {
    pub fn new(view_dir: impl Into<PathBuf>) -> Self {
        Self {
            view_dir: view_dir.into(),
            batch: 1000,
            idle_commit: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            tick: Duration::from_secs(1),
            shared: None,
        }
    }
}

/// What a handler reports about itself (service stats, `chatlog events stats`, metrics).
#[derive(Debug)]
pub struct HostStats {
    /// The committed checkpoint, for queries that wait for a seq ([`crate::MIN_SEQ_HEADER`]).
    pub committed: tokio::sync::watch::Sender<u64>,
    /// The last stream sequence committed.
    pub checkpoint: AtomicU64,
    /// Messages of the stream not applied yet, as of the last one read.
    pub lag: AtomicU64,
    /// Events applied.
    pub applied: AtomicU64,
    /// Chunks of events read (each applied at one go).
    pub reads: AtomicU64,
    /// Events that could not be decoded and were skipped.
    pub skipped: AtomicU64,
    /// Caught up to the stream's head as of the start, and answering queries.
    pub ready: AtomicBool,
}

impl Default for HostStats {
    fn default() -> Self {
        Self {
            committed: tokio::sync::watch::Sender::new(0),
            checkpoint: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }
}

impl HostStats {
    /// Whether the view answers queries: it has caught up to the head it saw at start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn set_checkpoint(&self, checkpoint: u64) {
        self.checkpoint.store(checkpoint, Relaxed);
        self.committed.send_replace(checkpoint);
    }

    /// Prometheus text for the handlers `hosted` (name, stats): each metric once, its HELP and
    /// TYPE and then a line per handler, as the text format requires (a block per handler
    /// repeated every metric's TYPE, which strict parsers such as `promtool check metrics`
    /// reject).
    pub fn render_prometheus(hosted: &[(&str, &HostStats)]) -> String {
        type Value = fn(&HostStats) -> u64;
        let metrics: [(&str, &str, &str, Value); 6] = [
            (
                "checkpoint",
                "gauge",
                "Last stream sequence the view committed.",
                |s| s.checkpoint.load(Relaxed),
            ),
            ("lag", "gauge", "Stream messages not applied yet.", |s| {
                s.lag.load(Relaxed)
            }),
            ("applied_total", "counter", "Events applied.", |s| {
                s.applied.load(Relaxed)
            }),
            (
                "reads_total",
                "counter",
                "Chunks of events read, each applied at one go.",
                |s| s.reads.load(Relaxed),
            ),
            (
                "skipped_total",
                "counter",
                "Undecodable events skipped.",
                |s| s.skipped.load(Relaxed),
            ),
            (
                "ready",
                "gauge",
                "1 once the view answers queries (caught up to the head it saw at start).",
                |s| u64::from(s.is_ready()),
            ),
        ];
        let mut out = String::new();
        for (metric, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP chatlog_handler_{metric} {help}");
            let _ = writeln!(out, "# TYPE chatlog_handler_{metric} {kind}");
            for (name, stats) in hosted {
                let _ = writeln!(
                    out,
                    "chatlog_handler_{metric}{{handler=\"{name}\"}} {}",
                    value(stats)
                );
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "checkpoint": self.checkpoint.load(Relaxed),
            "lag": self.lag.load(Relaxed),
            "applied": self.applied.load(Relaxed),
            "reads": self.reads.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("nats: {0}")]
    Nats(String),
    /// Asked to stop while waiting on NATS: what was not done is left for the next start.
    #[error("stopped before it was done")]
    Stopped,
}

/// Set once the host is asked to stop. Everything that waits on NATS (a derived event's append,
/// the emission mark, the bucket at start) gives up when it is, so a handler stops within a
/// bounded time whatever NATS is doing; the checkpoint and the emission mark make it safe for
/// the next start to redo what was left.
#[derive(Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// A flag never set (a rebuild runs to its end).
    pub fn never() -> Stopping {
        Stopping(tokio::sync::watch::channel(false).1)
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once set (never, for [`Stopping::never`]).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps `pause`, unless the flag is set first: then [`HostError::Stopped`].
    pub async fn sleep(&self, pause: Duration) -> Result<(), HostError> {
        self.unless(async {
            tokio::time::sleep(pause).await;
            Ok(())
        })
        .await
    }

    /// `work`, unless the flag is set first: then [`HostError::Stopped`].
    pub async fn unless<T>(
        &self,
        work: impl Future<Output = Result<T, HostError>>,
    ) -> Result<T, HostError> {
        tokio::select! {
            biased;
            () = self.wait() => Err(HostError::Stopped),
            done = work => done,
        }
    }
}

/// Runs `projection` until `shutdown`: keeps its view at `config.view_dir` up to date and answers
/// its queries on `views.<name>.*` in a queue group shared by its replicas, once it has caught up
/// to the stream's head as of its start (a replica rebuilding from an empty disk answers nothing
/// rather than something stale; `stats.ready` says when it answers). Returns soon after
/// `shutdown`, whatever NATS is doing (see [`Stopping`]).
pub async fn run<P: Projection>(
    projection: P,
    client: Client,
    config: HostConfig,
    stats: Arc<HostStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HostError> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        stop.send_replace(true);
        std::future::pending::<std::convert::Infallible>().await
    };
    let name = projection.name();
    let work = host(projection, client, config, stats, Stopping(stopping));
    let result = tokio::select! {
        done = work => done,
        never = signal => match never {},
    };
    match result {
        Err(HostError::Stopped) => {
            tracing::info!(view = name, "stopped with work left for the next start");
            Ok(())
        }
        other => other,
    }
}

async fn host<P: Projection>(
    projection: P,
    client: Client,
    config: HostConfig,
    stats: Arc<HostStats>,
    stopping: Stopping,
) -> Result<(), HostError> {
    let projection = Arc::new(projection);
    let name = projection.name();
    let view = Arc::new(View::open(&config.view_dir, name, projection.version())?);
    stats.set_checkpoint(view.checkpoint()?);
    let js = jetstream::new(client.clone());
    let (mut emitter, head) = stopping
        .unless(async {
            let emitter = Emitter::open(&js, name, &config.view_dir, MARKS_PATIENCE).await?;
            let head = head_at_start(&js, projection.stream()).await;
            Ok((emitter, head))
        })
        .await?;
    tracing::info!(
        view = name,
        checkpoint = view.checkpoint()?,
        head,
        "handler started"
    );
    // Queries once the view has committed the head it saw now.
    let serving = tokio::spawn({
        let (projection, view, stats) = (projection.clone(), view.clone(), stats.clone());
        async move {
            let mut committed = stats.committed.subscribe();
            let _ = committed.wait_for(|c| *c >= head).await;
            let service = serve_queries(projection, view, &client, stats.clone()).await?;
            // Ready means answering: the server has the service's subscriptions.
            client
                .flush()
                .await
                .map_err(|e| HostError::Nats(e.to_string()))?;
            stats.ready.store(true, Relaxed);
            tracing::info!(view = name, head, "caught up: answering queries");
            Ok::<_, HostError>(service)
        }
    });
    let mut ctx = Ctx {
        view: &view,
        js: &js,
        stats: &stats,
        emitter: &mut emitter,
        stopping: &stopping,
    };
    let result = consume(&*projection, &mut ctx, &config, None, |_, _| {}).await;
    view.flush()?;
    stats.ready.store(false, Relaxed);
    if serving.is_finished() {
        if let Ok(Ok(service)) = serving.await {
            // Bounded: with NATS gone, a stop that cannot be sent is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), service.stop()).await;
        }
    } else {
        serving.abort();
    }
    result.map(|_| ())
}

/// The stream's last sequence now, asked until NATS answers.
async fn head_at_start(js: &jetstream::Context, stream: chatlog_events::Stream) -> u64 {
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some(head) = stream_head(js, stream).await {
            return head;
        }
        tracing::warn!(
            stream = stream.name(),
            "cannot read the stream's head, retrying"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Wipes the view at `config.view_dir` and applies the stream up to its last sequence now,
/// calling `progress(seq, last)` as it goes. Returns the view's checksum and checkpoint.
/// Derived events are not emitted again: those of the past are in the log already.
pub async fn rebuild<P: Projection>(
    projection: &P,
    client: Client,
    config: &HostConfig,
    progress: impl FnMut(u64, u64),
) -> Result<ChecksumAnswer, HostError> {
    let view = View::open(&config.view_dir, projection.name(), projection.version())?;
    view.wipe()?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(projection.stream().name())
        .await
        .map_err(|e| HostError::Nats(e.to_string()))?;
    let last = stream
        .info()
        .await
        .map_err(|e| HostError::Nats(e.to_string()))?
        .state
        .last_sequence;
    let stats = HostStats::default();
    let mut ctx = Ctx {
        view: &view,
        js: &js,
        stats: &stats,
        emitter: &mut Emitter::silent(),
        stopping: &Stopping::never(),
    };
    let checkpoint = consume(projection, &mut ctx, config, Some(last), progress).await?;
    view.flush()?;
    Ok(ChecksumAnswer {
        checksum: format!("{:016x}", view.checksum()?),
        checkpoint,
        lag: 0,
    })
}

/// Applies the stream from the view's checkpoint + 1, until `stop_at` (when given) or `stopping`.
/// Returns the last committed checkpoint.
async fn consume<P: Projection + ?Sized>(
    projection: &P,
    ctx: &mut Ctx<'_>,
    config: &HostConfig,
    stop_at: Option<u64>,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, HostError> {
    let name = projection.name();
    let mut pause = Duration::from_millis(100);
    loop {
        let checkpoint = ctx.view.checkpoint()?;
        if stop_at.is_some_and(|stop| checkpoint >= stop) {
            return Ok(checkpoint);
        }
        let opened = match &config.shared {
            Some(shared) => Ok(shared.reader(ctx.js, projection.stream(), checkpoint + 1)),
            None => open_reader(ctx.js, projection.stream(), checkpoint + 1)
                .await
                .map(Reader::spawn),
        };
        let mut reader = match opened {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(view = name, error = %e, "cannot read the stream, retrying");
                tokio::select! {
                    () = ctx.stopping.wait() => return Ok(checkpoint),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        let mut batch = Batch::after(checkpoint);
        let mut quiet_since = tokio::time::Instant::now();
        let commit_by = |batch: &Batch| {
            let quiet = tokio::time::Instant::now() + config.idle_commit;
            if batch.pending.is_empty() {
                quiet
            } else {
                quiet.min(batch.since + config.max_delay)
            }
        };
        let mut checked = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(config.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = ctx.stopping;
        let restart = 'read: loop {
            let next = tokio::select! {
                () = stopping.wait() => {
                    // What can be finished without NATS is: the view's changes, unless derived
                    // events of theirs are still to be emitted (then the next start redoes them).
                    let left = (batch.pending.events, batch.emit.len());
                    return match batch.commit(ctx).await {
                        Ok(()) => Ok(batch.last),
                        Err(HostError::Stopped) => {
                            tracing::warn!(
                                view = name,
                                checkpoint = ctx.view.checkpoint()?,
                                events = left.0,
                                derived = left.1,
                                "stopping with events applied but not committed (derived events not all emitted): the next start applies them again"
                            );
                            Err(HostError::Stopped)
                        }
                        Err(e) => Err(e),
                    };
                }
                _ = ticks.tick(), if stop_at.is_none() => {
                    // Only a caught-up view knows what is overdue, and `tick` reads what is
                    // committed: what is pending (a heartbeat just applied) first. (Waiting for
                    // nothing to be pending instead, a steady trickle of events kept presence from
                    // ever timing anyone out.)
                    if ctx.stats.lag.load(Relaxed) == 0 {
                        batch.commit(ctx).await?;
                        for event in projection.tick(ctx.view, chrono::Utc::now()) {
                            append_until_stored(ctx.js, &event, stopping).await?;
                        }
                    }
                    continue;
                }
                next = tokio::time::timeout_at(commit_by(&batch), reader.rx.recv()) => next,
            };
            let chunk = match next {
                Err(_) => {
                    // Quiet, or what is pending has waited long enough: commit it.
                    batch.commit(ctx).await?;
                    // A reader can stall silently (its consumer lost with a restarted server):
                    // when quiet for a while, compare with the stream's head and start over if
                    // it is ahead.
                    if quiet_since.elapsed() >= STALL_CHECK && checked.elapsed() >= STALL_CHECK {
                        checked = tokio::time::Instant::now();
                        if let Some(head) = stream_head(ctx.js, projection.stream()).await {
                            ctx.stats
                                .lag
                                .store(head.saturating_sub(batch.last), Relaxed);
                            if head > batch.last {
                                break "stalled behind the stream";
                            }
                        }
                    }
                    continue;
                }
                Ok(None) => break "the reader ended",
                Ok(Some(chunk)) => chunk,
            };
            ctx.stats.reads.fetch_add(1, Relaxed);
            quiet_since = tokio::time::Instant::now();
            for read in chunk.iter() {
                let (seq, lag, decoded) = match read {
                    &Delivered::Event {
                        seq,
                        lag,
                        ref event,
                    } => (seq, lag, event),
                    Delivered::Failed(why, e) => {
                        tracing::warn!(view = name, error = %e, "{why}");
                        break 'read why;
                    }
                };
                if seq <= batch.last {
                    continue;
                }
                batch.apply(projection, ctx, seq, decoded, quiet_since);
                ctx.stats.lag.store(lag, Relaxed);
                let done = stop_at.is_some_and(|stop| seq >= stop);
                if batch.pending.events >= config.batch || done {
                    batch.commit(ctx).await?;
                    progress(seq, stop_at.unwrap_or(seq + lag));
                }
                if done {
                    return Ok(batch.last);
                }
            }
            if !batch.pending.is_empty() && batch.since.elapsed() >= config.max_delay {
                batch.commit(ctx).await?;
            }
        };
        batch.commit(ctx).await?;
        tracing::info!(
            view = name,
            why = restart,
            checkpoint = batch.last,
            "restarting the reader"
        );
    }
}

/// How long a reader may be quiet before its stream's head is checked.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// The stream's last sequence, if it can be read now.
/// 0 when the stream holds nothing: its messages may all have aged out (presence), and a reader
/// from any position is then as far as it can get.
async fn stream_head(js: &jetstream::Context, stream: chatlog_events::Stream) -> Option<u64> {
    let read = async {
        let mut s = js.get_stream(stream.name()).await.ok()?;
        let state = &s.info().await.ok()?.state;
        Some(if state.messages == 0 {
            0
        } else {
            state.last_sequence
        })
    };
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()
        .flatten()
}

/// What the reader task hands over: a stream message with its seq and lag, decoded.
// Nearly every item is an event: boxing it to shrink the rare failure would cost an allocation
// per event.
#[allow(clippy::large_enum_variant)]
enum Delivered {
    Event {
        seq: u64,
        lag: u64,
        event: Result<ChatEvent, chatlog_events::event::DecodeError>,
    },
    /// The reader cannot go on: why (the restart's reason) and the error.
    Failed(&'static str, String),
}

/// Reads and decodes on a task of its own, a chunk of what is ready at a time, so that decoding
/// runs beside applying and committing on a multi-thread runtime. Bounded: it reads ahead by a
/// few chunks at most. Stops when dropped.
///
/// At the head of a steady stream it reads in chunks, not event by event: after a chunk that did
/// not fill up, with less than a chunk left to read behind it (the stream's pending count as of
/// its last event), it waits [`Reader::LINGER`] before reading on, so a view wakes a few hundred
/// times a second rather than per event. A view behind the stream never waits: what is ready
/// there is often less than a chunk, and waiting after each would slow a rebuild several times.
///
/// The commit stays on the applying task: sled's `apply_batch` takes a process-wide write lock
/// that every `get` waits for, so committing on another thread gains nothing.
struct Reader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    /// The reading task, when the reader is the view's own.
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Decoded messages, shared by the views that read them.
type Chunk = Arc<Vec<Delivered>>;

impl Reader {
    /// Messages decoded per chunk at most.
    const CHUNK: usize = 256;
    /// How long the reader waits, at the head, after a chunk that was not full.
    const LINGER: Duration = Duration::from_millis(5);

    fn spawn(messages: jetstream::consumer::pull::Ordered) -> Reader {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            let mut chunks = messages.ready_chunks(Self::CHUNK);
            while let Some(chunk) = chunks.next().await {
                let mut out = Vec::with_capacity(chunk.len());
                let mut failed = false;
                for message in chunk {
                    let read = match message {
                        Err(e) => Delivered::Failed("reading failed", e.to_string()),
                        Ok(m) => match m.info() {
                            Ok(info) => Delivered::Event {
                                seq: info.stream_sequence,
                                lag: info.pending,
                                event: ChatEvent::decode(&m.payload),
                            },
                            Err(e) => Delivered::Failed("bad metadata", e.to_string()),
                        },
                    };
                    failed = matches!(read, Delivered::Failed(..));
                    out.push(read);
                    if failed {
                        break;
                    }
                }
                // Near the head (less than a chunk behind, as of the last event read), and what
                // was ready did not fill a chunk: let the next gather.
                let near_head = matches!(out.last(), Some(Delivered::Event { lag, .. }) if *lag < Self::CHUNK as u64);
                let linger = out.len() < Self::CHUNK && near_head;
                if tx.send(Arc::new(out)).await.is_err() || failed {
                    return;
                }
                if linger {
                    tokio::time::sleep(Self::LINGER).await;
                }
            }
        });
        Reader {
            rx,
            task: Some(task),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One reader per stream for the views of a process (`chatlog up`: history and mentions both
/// read `CHAT_ROOMS`): the stream is delivered and decoded once instead of once per view. On
/// appends that was a second delivery per event for NATS and a second decode for the handlers'
/// thread, a tenth of the machine while appends saturate it.
///
/// A view that asks to read from before where the shared reader is (a view starting behind the
/// others, or one restarting after a stall or an error) restarts it from there; the views ahead
/// pass over what they have applied (their seq check). The slowest view paces the reader (each
/// view's queue is bounded).
#[derive(Clone, Default)]
pub struct SharedReaders {
    sources: Arc<std::sync::Mutex<HashMap<&'static str, Source>>>,
}

impl std::fmt::Debug for SharedReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedReaders")
    }
}

type Source = tokio::sync::mpsc::UnboundedSender<(u64, tokio::sync::mpsc::Sender<Chunk>)>;

impl SharedReaders {
    /// A reader of `stream` from `from` on: the shared one, started on first use.
    fn reader(&self, js: &jetstream::Context, stream: chatlog_events::Stream, from: u64) -> Reader {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let request = match sources.get(stream.name()) {
            Some(source) => match source.send((from, tx)) {
                Ok(()) => return Reader { rx, task: None },
                // Its task ended (with the runtime it ran on): the request comes back.
                Err(back) => back.0,
            },
            None => (from, tx),
        };
        let (source, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(share(js.clone(), stream, requests));
        // The task holds `requests` until it ends: this send cannot fail.
        let _ = source.send(request);
        sources.insert(stream.name(), source);
        Reader { rx, task: None }
    }
}

/// The task behind a shared reader: one ordered consumer, restarted from the lowest position a
/// view asks for, each chunk handed to every view reading.
async fn share(
    js: jetstream::Context,
    stream: chatlog_events::Stream,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<(u64, tokio::sync::mpsc::Sender<Chunk>)>,
) {
    let mut views: Vec<tokio::sync::mpsc::Sender<Chunk>> = Vec::new();
    let mut reader: Option<Reader> = None;
    // The next seq the reader delivers (or is to start from).
    let mut next = u64::MAX;
    let mut pause = Duration::from_millis(100);
    let mut retry = tokio::time::Instant::now();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((from, view)) = request else { return };
                views.retain(|v| !v.is_closed());
                views.push(view);
                // From where it is or before (a view restarting after a stall): start over.
                if reader.is_none() || from <= next {
                    // `next` is u64::MAX while no view asked: the first one sets it.
                    next = next.min(from);
                    reader = None;
                    retry = tokio::time::Instant::now();
                }
            }
            _ = tokio::time::sleep_until(retry), if reader.is_none() && !views.is_empty() => {
                match open_reader(&js, stream, next).await {
                    Ok(m) => {
                        reader = Some(Reader::spawn(m));
                        pause = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(stream = stream.name(), error = %e, "cannot read the stream, retrying");
                        retry = tokio::time::Instant::now() + pause;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            chunk = async {
                match reader.as_mut() {
                    Some(r) => r.rx.recv().await,
                    None => std::future::pending().await,
                }
            }, if reader.is_some() => {
                let chunk = chunk.unwrap_or_else(|| {
                    Arc::new(vec![Delivered::Failed("the reader ended", String::new())])
                });
                let failed = chunk.iter().any(|d| matches!(d, Delivered::Failed(..)));
                if let Some(Delivered::Event { seq, .. }) = chunk.iter().rev().find(|d| matches!(d, Delivered::Event { .. })) {
                    next = seq + 1;
                }
                let mut reading = Vec::with_capacity(views.len());
                for view in views.drain(..) {
                    if view.send(chunk.clone()).await.is_ok() {
                        reading.push(view);
                    }
                }
                views = reading;
                if failed {
                    // Every view restarts from its own checkpoint and asks again.
                    reader = None;
                    views.clear();
                    next = u64::MAX;
                }
            }
        }
    }
}

async fn open_reader(
    js: &jetstream::Context,
    stream: chatlog_events::Stream,
    from: u64,
) -> Result<jetstream::consumer::pull::Ordered, String> {
    let stream = js
        .get_stream_no_info(stream.name())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// What a view is kept with while it consumes: its store, the stream, its stats, where its
/// derived events stand, and the flag that says stop.
struct Ctx<'a> {
    view: &'a View,
    js: &'a jetstream::Context,
    stats: &'a HostStats,
    emitter: &'a mut Emitter,
    stopping: &'a Stopping,
}

/// The events a view has applied since its last commit: their changes, the derived events they
/// emit, and the seq they reach.
struct Batch {
    pending: Pending,
    emit: Vec<ChatEvent>,
    last: u64,
    /// When its first change came (meaningful while something is pending).
    since: tokio::time::Instant,
}

impl Batch {
    fn after(checkpoint: u64) -> Batch {
        Batch {
            pending: Pending::default(),
            emit: Vec::new(),
            last: checkpoint,
            since: tokio::time::Instant::now(),
        }
    }

    /// Applies the event at `seq` (or, undecodable, counts it and passes over it) on top of what
    /// is pending.
    fn apply<P: Projection + ?Sized>(
        &mut self,
        projection: &P,
        ctx: &Ctx<'_>,
        seq: u64,
        decoded: &Result<ChatEvent, chatlog_events::event::DecodeError>,
        now: tokio::time::Instant,
    ) {
        if self.pending.is_empty() {
            self.since = now;
        }
        match decoded {
            Ok(event) => {
                let changes = {
                    let overlay = Overlay {
                        view: ctx.view,
                        pending: &self.pending,
                    };
                    projection.apply(&overlay, seq, event)
                };
                if seq > ctx.emitter.through {
                    self.emit.extend(changes.emit.iter().cloned());
                }
                self.pending.add(changes);
                ctx.stats.applied.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(view = projection.name(), seq, error = %e, "undecodable event skipped");
                ctx.stats.skipped.fetch_add(1, Relaxed);
                self.pending.events += 1;
            }
        }
        self.last = seq;
    }

    /// Appends the derived events (acknowledged, retried with their deterministic ids), then
    /// writes the pending changes with the checkpoint. A crash in between re-emits the same ids:
    /// stored once.
    async fn commit(&mut self, ctx: &mut Ctx<'_>) -> Result<(), HostError> {
        if self.pending.is_empty() && self.emit.is_empty() {
            return Ok(());
        }
        if !self.emit.is_empty() {
            for event in &self.emit {
                append_until_stored(ctx.js, event, ctx.stopping).await?;
            }
            self.emit.clear();
            ctx.emitter.emitted_through(self.last, ctx.stopping).await?;
        }
        ctx.view.commit(&mut self.pending, self.last)?;
        ctx.stats.set_checkpoint(self.last);
        Ok(())
    }
}

/// Appends `event` until JetStream acknowledges it, retrying (the same id: stored once) until
/// `stopping` is set: then [`HostError::Stopped`], mid-attempt too.
async fn append_until_stored(
    js: &jetstream::Context,
    event: &ChatEvent,
    stopping: &Stopping,
) -> Result<(), HostError> {
    let encoded = event.encode().map_err(|e| HostError::Nats(e.to_string()))?;
    use chatlog_events::nats;
    let mut pause = nats::FIRST_PAUSE;
    loop {
        let attempt = nats::append_once(js, &encoded);
        let error = match stopping.unless(async { Ok(attempt.await) }).await? {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        tracing::warn!(error = %error, id = %event.id, "emitting a derived event failed, retrying");
        stopping.sleep(pause).await?;
        pause = nats::next_pause(pause);
    }
}

/// Longest a query waits for the view to reach the seq it asked for.
const MIN_SEQ_PATIENCE: Duration = Duration::from_secs(2);

type ServiceError = async_nats::service::error::Error;

/// The seqs a query asks the view to have committed: (`Chatlog-Min-Seq`, `Chatlog-Require-Seq`).
/// An unreadable min seq is ignored, as it always was; an unreadable required one is refused,
/// since answering without the guarantee asked for would be answering wrong.
fn asked_seqs(
    headers: Option<&async_nats::HeaderMap>,
) -> Result<(Option<u64>, Option<u64>), ServiceError> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let min = header(queries::MIN_SEQ_HEADER).and_then(|v| v.parse::<u64>().ok());
    let required = match header(queries::REQUIRE_SEQ_HEADER).map(str::parse::<u64>) {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => {
            return Err(ServiceError {
                code: 400,
                status: format!("bad {} header", queries::REQUIRE_SEQ_HEADER),
            });
        }
    };
    Ok((min, required))
}

/// Waits up to `patience` for the view to commit the seqs asked; `Err` when it has not committed
/// the required one by then (a replica still catching up must not answer from an older state).
async fn wait_for_seqs(
    committed: &tokio::sync::watch::Sender<u64>,
    min: Option<u64>,
    required: Option<u64>,
    patience: Duration,
) -> Result<(), ServiceError> {
    let Some(target) = min.max(required) else {
        return Ok(());
    };
    let mut watched = committed.subscribe();
    let _ = tokio::time::timeout(patience, watched.wait_for(|c| *c >= target)).await;
    match required {
        Some(seq) if *committed.borrow() < seq => Err(ServiceError {
            code: usize::from(queries::NOT_CAUGHT_UP),
            status: format!("the view has not caught up to seq {seq}"),
        }),
        _ => Ok(()),
    }
}

/// Starts the view's micro service: one endpoint per query, plus `checksum`.
async fn serve_queries<P: Projection>(
    projection: Arc<P>,
    view: Arc<View>,
    client: &Client,
    stats: Arc<HostStats>,
) -> Result<async_nats::service::Service, HostError> {
    let name = projection.name();
    let stats_for_handler = stats.clone();
    let service = client
        .service_builder()
        .description(format!("chatlog {name} view"))
        .queue_group(format!("views.{name}"))
        .stats_handler(move |_, _| stats_for_handler.to_json())
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| HostError::Nats(e.to_string()))?;
    let group = service.group(format!("views.{name}"));
    let mut names: Vec<&'static str> = projection.queries().to_vec();
    names.push(queries::CHECKSUM);
    for query in names {
        let mut endpoint = group
            .endpoint(query)
            .await
            .map_err(|e| HostError::Nats(e.to_string()))?;
        let projection = projection.clone();
        let view = view.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let projection = projection.clone();
                let view = view.clone();
                let stats = stats.clone();
                // One task per request: a query waiting for a seq does not hold up the others.
                tokio::spawn(async move {
                    answer_query(&*projection, &view, &stats, query, request).await;
                });
            }
        });
    }
    Ok(service)
}

async fn answer_query<P: Projection>(
    projection: &P,
    view: &View,
    stats: &HostStats,
    query: &'static str,
    request: async_nats::service::Request,
) {
    let ready = match asked_seqs(request.message.headers.as_ref()) {
        Ok((min, required)) => {
            wait_for_seqs(&stats.committed, min, required, MIN_SEQ_PATIENCE).await
        }
        Err(e) => Err(e),
    };
    let response = ready.and_then(|()| {
        let answer = if query == queries::CHECKSUM {
            checksum(view, stats)
        } else {
            projection.query(view, query, &request.message.payload)
        };
        answer.map(Bytes::from).map_err(|e| ServiceError {
            code: e.code(),
            status: e.message().to_string(),
        })
    });
    if let Err(e) = request.respond(response).await {
        tracing::debug!(error = %e, query, "answering a query failed");
    }
}

fn checksum(view: &View, stats: &HostStats) -> Result<Vec<u8>, QueryError> {
    let internal = |e: ViewError| QueryError::Internal(e.to_string());
    // The view moves while it is hashed: answer only a checksum that no commit overlapped, so
    // that it belongs to the checkpoint it is reported with.
    let mut attempts = 0;
    let (checksum, checkpoint) = loop {
        let before = view.checkpoint().map_err(internal)?;
        let checksum = view.checksum().map_err(internal)?;
        let after = view.checkpoint().map_err(internal)?;
        attempts += 1;
        if before == after || attempts >= 50 {
            break (checksum, before);
        }
    };
    crate::answer(&ChecksumAnswer {
        checksum: format!("{checksum:016x}"),
        checkpoint,
        lag: stats.lag.load(Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use tokio::sync::watch;

    use super::*;

    /// A patience that never runs out in these tests: their waits end by what is committed.
    const LONG: Duration = Duration::from_secs(60);

    fn headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, *value);
        }
        h
    }

    #[test]
    fn the_seqs_asked_are_read_from_the_headers() {
        assert_eq!(asked_seqs(None).unwrap(), (None, None));
        let both = headers(&[
            (queries::MIN_SEQ_HEADER, "7"),
            (queries::REQUIRE_SEQ_HEADER, "9"),
        ]);
        assert_eq!(asked_seqs(Some(&both)).unwrap(), (Some(7), Some(9)));
        let bad_min = headers(&[(queries::MIN_SEQ_HEADER, "x")]);
        assert_eq!(asked_seqs(Some(&bad_min)).unwrap(), (None, None));
        let bad_required = headers(&[(queries::REQUIRE_SEQ_HEADER, "-1")]);
        assert_eq!(asked_seqs(Some(&bad_required)).unwrap_err().code, 400);
    }

    #[tokio::test]
    async fn a_required_seq_already_committed_is_answered_without_waiting() {
        let committed = watch::Sender::new(10);
        let ready = wait_for_seqs(&committed, None, Some(10), LONG).now_or_never();
        assert!(matches!(ready, Some(Ok(()))));
        let nothing_asked = wait_for_seqs(&committed, None, None, LONG).now_or_never();
        assert!(matches!(nothing_asked, Some(Ok(()))));
    }

    #[tokio::test]
    async fn a_required_seq_committed_during_the_wait_is_answered() {
        let committed = watch::Sender::new(5);
        let wait = wait_for_seqs(&committed, None, Some(10), LONG);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending());
        committed.send_replace(9);
        assert!(futures::poll!(&mut wait).is_pending(), "9 is not 10");
        committed.send_replace(10);
        assert!(matches!(
            futures::poll!(&mut wait),
            std::task::Poll::Ready(Ok(()))
        ));
    }

    #[tokio::test]
    async fn a_view_behind_a_required_seq_refuses_with_503() {
        let committed = watch::Sender::new(5);
        let refused = wait_for_seqs(&committed, None, Some(10), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(refused.code, 503);
        assert_eq!(refused.status, "the view has not caught up to seq 10");
    }

    #[tokio::test]
    async fn a_view_behind_a_min_seq_answers_anyway() {
        let committed = watch::Sender::new(5);
        let patience = Duration::from_millis(20);
        assert!(
            wait_for_seqs(&committed, Some(10), None, patience)
                .await
                .is_ok()
        );
        // Past the required seq, short of the min: the guarantee asked for holds.
        assert!(
            wait_for_seqs(&committed, Some(10), Some(5), patience)
                .await
                .is_ok()
        );
    }
}
