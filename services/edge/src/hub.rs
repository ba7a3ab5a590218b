//! Per-room fan-out: one core NATS subscription per room per edge process.
//!
//! A [`Feed`] subscribes to `live.room.<room>` (the stream's RePublish copy), keeps the last seq
//! it forwarded, and hands every room event, in seq order, to each local subscriber's bounded
//! queue, the frame serialized once and shared. The republished `Nats-Last-Sequence` header names
//! the previous event of the room: when it is not the last forwarded seq, the feed reads the
//! missing events from the stream before going on, so what it forwards has no gap. After a NATS
//! reconnect it reads up to the room's head for the same reason.
//!
//! A subscriber whose queue is full is dropped from the feed and its connection is told to close
//! (`kick`): a slow client never slows the room. Subscribing returns the last forwarded seq, taken
//! under the same lock that forwards, so a subscriber gets exactly the events after it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{HeaderMap, Message};
use axum::extract::ws::Utf8Bytes;
use chatlog_events::{RoomId, Stream, subjects};
use futures::StreamExt;
use tokio::sync::{Notify, watch};

use crate::{
    frames,
    inbox::{self, TrySendError},
    log::{Log, LogError},
    views::Views,
};

/// One frame for one connection, from a feed.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Which join of the connection this is for (a connection may leave and rejoin a room).
    pub join: u64,
    /// The room event's seq (events only).
    pub seq: u64,
    /// The frame, shared by every delivery of it.
    pub frame: Utf8Bytes,
    pub kind: Kind,
}

/// What a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A room event: in seq order, deduplicated per room by the connection.
    Event,
    /// The room's presence changed: written as it comes.
    Presence,
    /// A notification for the connection's user.
    Notification,
    /// The connection's user was removed from the room: the frame is `left`.
    Removed,
}

/// A connection's place in a room's feed.
#[derive(Clone)]
pub struct Subscriber {
    pub join: u64,
    /// Whose connection: a member removed from a private room stops receiving it at once.
    pub user: chatlog_events::UserId,
    pub tx: inbox::Sender<Delivery>,
    /// Told when the queue overflowed or the edge shuts down: the connection must close.
    pub kick: Arc<Kick>,
}

/// Why a connection was told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Its queue overflowed: it must rejoin with `since`.
    SlowConsumer,
    /// The edge is shutting down: reconnect elsewhere and rejoin with `since`.
    Shutdown,
}

/// A connection's one "close now" signal, owned by the connection and held by the feeds it is
/// in and by the edge's registry (for shutdown). Only the connection waits on it, so it costs
/// no lock shared with other connections on the delivery path.
#[derive(Debug, Default)]
pub struct Kick {
    /// 0 = not kicked, else a [`KickReason`] + 1; the first reason wins.
    reason: std::sync::atomic::AtomicU8,
    notify: Notify,
}

impl Kick {
    pub fn kick(&self, reason: KickReason) {
        let code = match reason {
            KickReason::SlowConsumer => 1,
            KickReason::Shutdown => 2,
        };
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        // A stored permit: a connection not waiting right now sees it at its next wait.
        self.notify.notify_one();
    }

    /// Resolves once kicked, with the first reason given.
    pub async fn kicked(&self) -> KickReason {
        loop {
            match self.reason.load(Ordering::Acquire) {
                1 => return KickReason::SlowConsumer,
                2 => return KickReason::Shutdown,
                _ => self.notify.notified().await,
            }
        }
    }
}

/// The fan-out of every room some local connection has joined.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    log: Log,
    views: Views,
    feeds: Mutex<HashMap<RoomId, Arc<Feed>>>,
    next_join: AtomicU64,
    /// Bumped on every NATS (re)connect: feeds then read up to the head in case they missed some.
    reconnects: watch::Receiver<u64>,
    /// How long a join waits for a new feed to be ready before answering `unavailable`.
    ready_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Starting,
    Ready,
    Failed,
}

struct Feed {
    room: RoomId,
    state: Mutex<FeedState>,
    status: watch::Sender<Status>,
    /// The room events task and the presence task.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

struct FeedState {
    /// The last seq forwarded: every later event goes to every subscriber.
    last: u64,
    subscribers: Vec<Subscriber>,
    /// Set when the last subscriber left; a join that finds it closed starts a new feed.
    closed: bool,
}

impl Hub {
    pub fn new(
        log: Log,
        views: Views,
        reconnects: watch::Receiver<u64>,
        ready_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                log,
                views,
                feeds: Mutex::new(HashMap::new()),
                next_join: AtomicU64::new(1),
                reconnects,
                ready_timeout,
            }),
        }
    }

    /// A join id, unique in this process.
    pub fn next_join(&self) -> u64 {
        self.inner.next_join.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of rooms with a live subscription here.
    pub fn rooms(&self) -> usize {
        lock(&self.inner.feeds).len()
    }

    /// Adds `sub` to the room's feed (starting it if needed) and returns the last seq forwarded:
    /// `sub` will get every event after it.
    pub async fn join(&self, room: &RoomId, sub: Subscriber) -> Result<u64, LogError> {
        loop {
            let feed = {
                let mut feeds = lock(&self.inner.feeds);
                feeds
                    .entry(room.clone())
                    .or_insert_with(|| Feed::start(room.clone(), &self.inner))
                    .clone()
            };
            let mut status = feed.status.subscribe();
            let ready = tokio::time::timeout(
                self.inner.ready_timeout,
                status.wait_for(|s| *s != Status::Starting),
            )
            .await;
            let failed = !matches!(ready, Ok(Ok(s)) if *s == Status::Ready);
            if failed {
                self.remove_if_same(room, &feed);
                return Err(LogError::Unavailable);
            }
            let mut state = lock(&feed.state);
            if state.closed {
                continue;
            }
            state.subscribers.push(sub);
            return Ok(state.last);
        }
    }

    /// Removes the subscriber of `join` from the room's feed; the feed stops with its last one.
    pub fn leave(&self, room: &RoomId, join: u64) {
        let mut feeds = lock(&self.inner.feeds);
        let Some(feed) = feeds.get(room).cloned() else {
            return;
        };
        let mut state = lock(&feed.state);
        state.subscribers.retain(|s| s.join != join);
        if state.subscribers.is_empty() {
            state.closed = true;
            drop(state);
            feeds.remove(room);
            for task in lock(&feed.tasks).drain(..) {
                task.abort();
            }
        }
    }

    fn remove_if_same(&self, room: &RoomId, feed: &Arc<Feed>) {
        let mut feeds = lock(&self.inner.feeds);
        if feeds.get(room).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(room);
            lock(&feed.state).closed = true;
        }
    }
}

impl Feed {
    fn start(room: RoomId, hub: &HubInner) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            room,
            state: Mutex::new(FeedState {
                last: 0,
                subscribers: Vec::new(),
                closed: false,
            }),
            status: watch::Sender::new(Status::Starting),
            tasks: Mutex::new(Vec::new()),
        });
        let events = tokio::spawn(run(feed.clone(), hub.log.clone(), hub.reconnects.clone()));
        let presence = tokio::spawn(run_presence(
            feed.clone(),
            hub.log.clone(),
            hub.views.clone(),
        ));
        lock(&feed.tasks).extend([events.abort_handle(), presence.abort_handle()]);
        feed
    }

    fn last(&self) -> u64 {
        lock(&self.state).last
    }

    /// Forwards one event to every subscriber, once, in order.
    fn forward(&self, seq: u64, body: &[u8]) {
        let frame = frames::event_frame(self.room.as_str(), seq, body);
        let mut state = lock(&self.state);
        if seq <= state.last {
            return;
        }
        state.last = seq;
        let Some(frame) = frame else {
            tracing::warn!(room = %self.room, seq, "stored event is not json, not forwarded");
            return;
        };
        deliver_all(&self.room, &mut state.subscribers, seq, &frame, Kind::Event);
        // Removed from the room: the removed member's sockets get that event, then `left`, and
        // nothing after.
        if let Some(removed) = removed_member(body) {
            let left = frames::ServerFrame::Left {
                room: self.room.as_str(),
            }
            .to_text();
            state.subscribers.retain(|sub| {
                if sub.user != removed {
                    return true;
                }
                let delivery = Delivery {
                    join: sub.join,
                    seq,
                    frame: left.clone(),
                    kind: Kind::Removed,
                };
                if sub.tx.try_send(delivery).is_err() {
                    sub.kick.kick(KickReason::SlowConsumer);
                }
                false
            });
        }
    }

    /// Sends a presence frame to every subscriber.
    fn forward_presence(&self, frame: &Utf8Bytes) {
        let mut state = lock(&self.state);
        deliver_all(&self.room, &mut state.subscribers, 0, frame, Kind::Presence);
    }
}

/// Hands `frame` to every subscriber's queue; a full queue drops the subscriber and kicks it.
pub fn deliver_all(
    what: &dyn std::fmt::Display,
    subscribers: &mut Vec<Subscriber>,
    seq: u64,
    frame: &Utf8Bytes,
    kind: Kind,
) {
    use crate::metrics::counters::{DELIVERIES, add};
    let mut delivered = 0;
    subscribers.retain(|sub| {
        let delivery = Delivery {
            join: sub.join,
            seq,
            frame: frame.clone(),
            kind,
        };
        match sub.tx.try_send(delivery) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                tracing::info!(feed = %what, join = sub.join, "slow consumer dropped");
                sub.kick.kick(KickReason::SlowConsumer);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    });
    add(&DELIVERIES, delivered);
}

/// The feed's task: subscribe, learn the head, then forward live events, filling any gap.
async fn run(feed: Arc<Feed>, log: Log, mut reconnects: watch::Receiver<u64>) {
    let stored_subject = subjects::room(&feed.room);
    let mut live = match log
        .client()
        .subscribe(subjects::live_room(&feed.room))
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(room = %feed.room, error = %e, "subscribing to the live feed failed");
            feed.status.send_replace(Status::Failed);
            return;
        }
    };
    // Subscribed first, head second: whatever is appended in between arrives live with a seq at
    // or below the head and is skipped, so nothing is missed and nothing is forwarded twice.
    match log.last_seq(Stream::Rooms, &stored_subject).await {
        Ok(head) => lock(&feed.state).last = head,
        Err(e) => {
            tracing::warn!(room = %feed.room, error = %e, "reading the room head failed");
            feed.status.send_replace(Status::Failed);
            return;
        }
    }
    reconnects.mark_unchanged();
    feed.status.send_replace(Status::Ready);
    loop {
        tokio::select! {
            msg = live.next() => {
                let Some(msg) = msg else { break };
                on_live(&feed, &log, &stored_subject, msg).await;
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    break;
                }
                // Events appended while this edge was cut off were never republished to it.
                let head = loop {
                    match log.last_seq(Stream::Rooms, &stored_subject).await {
                        Ok(head) => break head,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                fill(&feed, &log, &stored_subject, head).await;
            }
        }
    }
}

async fn on_live(feed: &Feed, log: &Log, stored_subject: &str, msg: Message) {
    let headers = msg.headers.as_ref();
    let Some(seq) = header_u64(headers, subjects::headers::SEQUENCE) else {
        tracing::warn!(room = %feed.room, "live message without Nats-Sequence ignored");
        return;
    };
    if seq <= feed.last() {
        return;
    }
    if let Some(previous) = header_u64(headers, subjects::headers::LAST_SEQUENCE)
        && previous > feed.last()
    {
        tracing::debug!(room = %feed.room, from = feed.last() + 1, to = previous, "filling a gap");
        fill(feed, log, stored_subject, previous).await;
    }
    feed.forward(seq, &msg.payload);
}

/// Reads and forwards the room's stored events after the feed's last seq, up to `to`; retries
/// until it can (the subscribers wait rather than see a gap).
async fn fill(feed: &Feed, log: &Log, stored_subject: &str, to: u64) {
    let mut pause = Duration::from_millis(50);
    while feed.last() < to {
        let from = feed.last() + 1;
        let read = log
            .read_each(Stream::Rooms, stored_subject, from, to, usize::MAX, |m| {
                feed.forward(m.seq, &m.body);
                std::future::ready(true)
            })
            .await;
        match read {
            Ok(0) => {
                // The range holds nothing after all (it cannot be deleted): nothing to wait for.
                tracing::warn!(room = %feed.room, from, to, "gap not found in the stream");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(room = %feed.room, error = %e, "filling a gap failed, retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The feed's presence task: on every presence change of the room (not heartbeats), asks the
/// presence view (once it has applied the change) and sends the frame to every subscriber when
/// it differs from the last one. Bursts are coalesced: one query for the latest seq.
async fn run_presence(feed: Arc<Feed>, log: Log, views: Views) {
    use chatlog_events::queries::{PresenceAnswer, PresenceRequest, presence};
    let mut live = match log
        .client()
        .subscribe(subjects::live_presence(&feed.room))
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(room = %feed.room, error = %e, "subscribing to presence failed");
            return;
        }
    };
    let mut last_frame: Option<Utf8Bytes> = None;
    while let Some(first) = live.next().await {
        let mut latest: Option<u64> = None;
        let mut next = Some(first);
        while let Some(msg) = next {
            if changes_presence(&msg.payload) {
                let seq = header_u64(msg.headers.as_ref(), subjects::headers::SEQUENCE);
                latest = latest.max(seq).or(seq);
            }
            next = futures::FutureExt::now_or_never(live.next()).flatten();
        }
        let Some(seq) = latest else { continue };
        let request = PresenceRequest {
            room: feed.room.clone(),
        };
        let answer: PresenceAnswer = match views
            .ask_at(presence::VIEW, presence::ROOM, &request, Some(seq))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(room = %feed.room, error = %e, "presence view unavailable");
                continue;
            }
        };
        let frame = frames::presence_frame(feed.room.as_str(), &answer);
        if last_frame.as_ref() != Some(&frame) {
            feed.forward_presence(&frame);
            last_frame = Some(frame);
        }
    }
}

/// The member a `chat.member.left` event removes (its type read before anything is decoded).
fn removed_member(body: &[u8]) -> Option<chatlog_events::UserId> {
    if chatlog_events::EventType::of(body) != Some(chatlog_events::EventType::MemberLeft) {
        return None;
    }
    match chatlog_events::ChatEvent::decode(body).ok()?.payload {
        chatlog_events::Payload::MemberLeft(m) => Some(m.member),
        _ => None,
    }
}

/// Whether a stored presence event can change who is online or typing (heartbeats cannot).
fn changes_presence(body: &[u8]) -> bool {
    chatlog_events::EventType::of(body)
        .is_some_and(|t| t != chatlog_events::EventType::PresenceHeartbeat)
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// Locks a mutex, ignoring poisoning: the guarded state stays consistent across a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
