//! The socket side of one connection: one task owns it, reads client frames, writes server
//! frames (each write bounded by [`WRITE_TIMEOUT`]) and feeds its [`Session`] from three inputs:
//! - the socket: client frames, handled by [`super::commands`];
//! - `live`: the bounded queue the room feeds ([`crate::hub`]) and the user's notifications push
//!   deliveries into;
//! - `ctl`: answers of spawned work (catch-up reads, the room's presence after a join).
//!
//! Appends are pipelined: each is handed to JetStream in the order the client sent it, and its
//! ack is written when it completes, by this loop.

use std::{pin::Pin, sync::Arc, time::Duration};

use axum::{
    Error,
    extract::ws::{CloseFrame, Message, Utf8Bytes},
};
use chatlog_events::UserId;
use futures::{FutureExt, SinkExt, StreamExt, stream::FuturesUnordered};
use sync_wrapper::SyncWrapper;
use tokio::task::AbortHandle;

use super::{
    close,
    session::{Left, Session, Step},
};
use crate::{
    AppState,
    error::ApiError,
    frames,
    hub::{Delivery, Kick, KickReason, Subscriber},
    inbox,
};

/// A write that does not finish in this time means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers of spawned work, in the order the connection must apply them.
pub(super) enum Ctl {
    /// The room's presence after join `join`: written only while that join lasts.
    Presence { join: u64, frame: Utf8Bytes },
    /// One stored event of a catch-up.
    CatchUp {
        join: u64,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// The catch-up of `join` reached the head it was asked for.
    CaughtUp { join: u64 },
    /// The catch-up of `join` could not finish: the room is left, the client told.
    CatchUpFailed { join: u64, error: ApiError },
}

/// Why the connection loop stops.
pub(super) enum Stop {
    /// The client went away or the socket failed.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

const SLOW: Stop = Stop::Close(close::SLOW_CONSUMER, "slow consumer: rejoin with since");

/// Where a connection's frames go: a WebSocket's sink, or the line protocol's writer
/// ([`crate::line`]), which renders each frame as lines.
pub trait Outbound: futures::Sink<Message, Error = Error> + Unpin + Send {}
impl<T: futures::Sink<Message, Error = Error> + Unpin + Send> Outbound for T {}

/// Where a client's requests come from: a WebSocket's messages, or the line protocol's lines.
pub trait Inbound: futures::Stream<Item = Result<Incoming, Error>> + Unpin + Send {}
impl<T: futures::Stream<Item = Result<Incoming, Error>> + Unpin + Send> Inbound for T {}

/// Which kind of client a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Pinged every period; one silent for two periods is gone (a dead network sends no close).
    WebSocket,
    /// Not pinged: a line client may lurk in silence, and TCP keepalive finds a dead one.
    Line,
    /// A server-sent event stream: it only reads. A comment every [`KEEP_ALIVE`] keeps proxies
    /// from closing it; its joins record no membership and no presence (a `GET` changes nothing).
    EventStream,
}

/// How often an event stream gets a comment line when nothing else is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

impl Peer {
    /// Whether its joins record membership and presence.
    pub fn takes_part(self) -> bool {
        self != Peer::EventStream
    }
}

/// What a client sent.
pub enum Incoming {
    /// A JSON frame, parsed by [`crate::frames::ClientFrame::parse`] (WebSocket text).
    Text(Utf8Bytes),
    /// A frame parsed already (a line).
    Frame(frames::ClientFrame),
    /// Input that is no frame: answered with this error, and the connection stays.
    Bad(ApiError),
    /// A control message (ping, pong): the peer is there.
    Heard,
    /// The client is going.
    Close,
}

impl From<Message> for Incoming {
    fn from(message: Message) -> Self {
        match message {
            Message::Text(text) => Incoming::Text(text),
            Message::Binary(_) => Incoming::Bad(ApiError::bad_request(
                "binary frames are not supported, send json text",
            )),
            Message::Ping(_) | Message::Pong(_) => Incoming::Heard,
            Message::Close(_) => Incoming::Close,
        }
    }
}

/// When a connection's first heartbeat is due: a point of the period drawn from its random id
/// (at least a tenth of it). Connections that came together (an edge restarted, every client
/// reconnecting) would otherwise heartbeat together, a burst of appends every period.
fn first_heartbeat(connection: &str, every: Duration) -> Duration {
    let spread = connection
        .get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(u32::MAX);
    every
        .mul_f64(f64::from(spread) / f64::from(u32::MAX))
        .max(every / 10)
}

/// Appends one connection may have in flight: at this many its loop stops reading the socket
/// (TCP pushes back on a client that pipelines faster than the log acks) and goes on writing
/// acks. At the default send rate a connection never gets near it.
pub const MAX_APPENDS_IN_FLIGHT: usize = 256;

/// A connection's appends in flight, each ending in its ack or error frame.
type Appends = FuturesUnordered<Pin<Box<dyn Future<Output = Utf8Bytes> + Send>>>;

/// The next ack or error frame of an append in flight.
async fn next_ack(appends: &mut SyncWrapper<Option<Appends>>) -> Option<Utf8Bytes> {
    appends.get_mut().as_mut()?.next().await
}

pub(super) struct Connection {
    pub(super) state: AppState,
    pub(super) user: UserId,
    pub(super) session: Session<AbortHandle>,
    pub(super) live_tx: inbox::Sender<Delivery>,
    /// Boxed: the queue keeps a few slots after it drains, and they should be pointers, not the
    /// largest `Ctl`.
    pub(super) ctl_tx: inbox::Sender<Box<Ctl>>,
    pub(super) kick: Arc<Kick>,
    /// Opaque id of this socket in presence events.
    pub(super) connection: String,
    /// This connection's place in its user's notification feed.
    notify_join: u64,
    pub(super) peer: Peer,
    /// Appends in flight, each answering its ack or error frame.
    /// Made at the first send: an empty `FuturesUnordered` still allocates ~200 bytes.
    pub(super) appends: SyncWrapper<Option<Appends>>,
}

impl Connection {
    fn new(
        state: AppState,
        user: UserId,
        peer: Peer,
    ) -> (Self, inbox::Receiver<Delivery>, inbox::Receiver<Box<Ctl>>) {
        let limits = &state.config.limits;
        let (live_tx, live_rx) = inbox::inbox(limits.outbound_queue);
        let (ctl_tx, ctl_rx) = inbox::inbox(256);
        let session = Session::new(limits.catch_up_buffer);
        let conn = Self {
            state,
            user,
            session,
            live_tx,
            ctl_tx,
            kick: Arc::new(Kick::default()),
            connection: uuid::Uuid::new_v4().simple().to_string(),
            notify_join: 0,
            peer,
            appends: SyncWrapper::new(None),
        };
        (conn, live_rx, ctl_rx)
    }
}

impl Connection {
    async fn run_loop<S: Outbound>(
        &mut self,
        mut sink: S,
        mut stream: impl Inbound,
        mut live_rx: inbox::Receiver<Delivery>,
        mut ctl_rx: inbox::Receiver<Box<Ctl>>,
    ) {
        // Presence heartbeats, and pings: a peer silent for two ping periods is gone (a dead
        // network sends no close), and its presence ends. One timer for both, set to whichever
        // is due first (a timer is 112 bytes of every connection).
        let every = self.state.config.limits.heartbeat;
        let ping_every = match self.peer {
            Peer::EventStream => KEEP_ALIVE,
            Peer::WebSocket | Peer::Line => self.state.config.limits.ping,
        };
        let start = tokio::time::Instant::now();
        let first = first_heartbeat(&self.connection, every);
        let (mut next_heartbeat, mut next_ping) = (start + first, start + ping_every);
        let mut timer = Box::pin(tokio::time::sleep_until(next_heartbeat.min(next_ping)));
        let mut heard = start;
        let stop = loop {
            let in_flight = self.appends.get_mut().as_ref().map_or(0, |a| a.len());
            if in_flight >= MAX_APPENDS_IN_FLIGHT {
                // Not reading, by choice: what the peer sent waits in the socket, and its
                // silence says nothing about whether it is still there.
                heard = tokio::time::Instant::now();
            }
            let step = tokio::select! {
                biased;
                reason = self.kick.kicked() => Err(kicked(reason)),
                // Boxed: rare next to deliveries, and their futures are large; inline they would
                // make every idle connection's task as large as the largest of them.
                Some(ctl) = ctl_rx.recv() => Box::pin(self.on_ctl(*ctl, &mut sink)).await,
                Some(frame) = next_ack(&mut self.appends), if in_flight > 0 => self.on_acks(frame, &mut sink).await,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    let mut step = Ok(());
                    if now >= next_heartbeat {
                        self.heartbeat();
                        next_heartbeat = now + every;
                    }
                    if now >= next_ping {
                        next_ping = now + ping_every;
                        step = if self.peer == Peer::Line {
                            Ok(())
                        } else if self.peer == Peer::WebSocket && heard.elapsed() > ping_every * 2 {
                            Err(Stop::Gone)
                        } else {
                            Box::pin(self.guard(sink.feed(Message::Ping(bytes::Bytes::new())))).await
                        };
                    }
                    timer.as_mut().reset(next_heartbeat.min(next_ping));
                    step
                }
                Some(delivery) = live_rx.recv() => self.on_live(delivery, &mut live_rx, &mut sink).await,
                msg = stream.next(), if in_flight < MAX_APPENDS_IN_FLIGHT => {
                    heard = tokio::time::Instant::now();
                    match msg {
                    None | Some(Ok(Incoming::Close)) => Err(Stop::Gone),
                    Some(Ok(Incoming::Text(text))) => Box::pin(self.on_text(text.as_str(), &mut sink)).await,
                    Some(Ok(Incoming::Frame(frame))) => Box::pin(self.on_frame(frame, &mut sink)).await,
                    Some(Ok(Incoming::Bad(e))) => self.write(&mut sink, frames::error_frame(None, &e)).await,
                    Some(Ok(Incoming::Heard)) => Ok(()),
                    Some(Err(e)) => Err(read_error(e)),
                    }
                }
            };
            let flushed = match step {
                Ok(()) => self.flush(&mut sink).await,
                Err(stop) => Err(stop),
            };
            if let Err(stop) = flushed {
                break stop;
            }
        };
        if let Stop::Close(code, reason) = stop {
            // Whichever way it was found slow (its queue full, a write that did not finish, its
            // catch-up buffer full): once per connection.
            if code == close::SLOW_CONSUMER {
                crate::metrics::counters::add(&crate::metrics::counters::SLOW_CONSUMER_KICKS, 1);
            }
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
    }
}

/// A connection's seats: its user's, and its address's unless the address is exempt.
pub(crate) type Seat = (
    crate::limits::Seat<UserId>,
    Option<crate::limits::Seat<std::net::IpAddr>>,
);

/// Runs one upgraded connection until it closes, then leaves every room it joined.
pub(crate) async fn serve(
    state: AppState,
    user: UserId,
    seat: Seat,
    (sink, stream): (impl Outbound, impl Inbound),
    peer: Peer,
) {
    let (mut conn, live_rx, ctl_rx) = Connection::new(state, user, peer);
    conn.state.metrics.connection_opened();
    conn.notify_join = conn.state.hub.next_join();
    conn.state.users.subscribe(
        &conn.user,
        Subscriber {
            join: conn.notify_join,
            user: conn.user.clone(),
            tx: conn.live_tx.clone(),
            kick: conn.kick.clone(),
        },
    );
    // Registered before this check, so a shutdown either kicked it or is seen here.
    if *conn.state.shutdown.borrow() {
        conn.kick.kick(KickReason::Shutdown);
    }
    conn.run_loop(sink, stream, live_rx, ctl_rx).await;
    // Appends the client sent before it went are already with JetStream; a first attempt that
    // failed is still retried to its end (the client gets no ack, but nothing stops half way).
    if let Some(unfinished) = conn.appends.get_mut().take()
        && !unfinished.is_empty()
    {
        tokio::spawn(unfinished.for_each(|_| async {}));
    }
    for left in conn.session.leave_all() {
        conn.left(left);
    }
    conn.state.users.unsubscribe(&conn.user, conn.notify_join);
    conn.state.metrics.connection_closed();
    drop(seat);
}

impl Connection {
    /// Writes one frame (flushed at the end of the loop turn), giving up when the client is
    /// kicked or does not read for [`WRITE_TIMEOUT`].
    pub(super) async fn write(
        &self,
        sink: &mut impl Outbound,
        frame: Utf8Bytes,
    ) -> Result<(), Stop> {
        let message = Message::Text(frame);
        // The common case, room in the socket's buffer, needs no timer: try once without one. A
        // feed that did not complete did not take the message, so it is fed again, guarded.
        if let Some(done) = sink.feed(message.clone()).now_or_never() {
            return done.map_err(|_| Stop::Gone);
        }
        Box::pin(self.guard(sink.feed(message))).await
    }

    /// Flushes what was fed this turn, without a timer when the socket takes it at once.
    async fn flush(&self, sink: &mut impl Outbound) -> Result<(), Stop> {
        if let Some(done) = sink.flush().now_or_never() {
            return done.map_err(|_| Stop::Gone);
        }
        Box::pin(self.guard(sink.flush())).await
    }

    /// Boxed where it is awaited: it is the slow path (a socket that did not take the frame at
    /// once), and its timer inline would make every connection's task larger.
    async fn guard(&self, io: impl Future<Output = Result<(), Error>>) -> Result<(), Stop> {
        tokio::select! {
            r = io => r.map_err(|_| Stop::Gone),
            reason = self.kick.kicked() => Err(kicked(reason)),
            _ = tokio::time::sleep(WRITE_TIMEOUT) => Err(SLOW),
        }
    }

    async fn on_live(
        &mut self,
        first: Delivery,
        live_rx: &mut inbox::Receiver<Delivery>,
        sink: &mut impl Outbound,
    ) -> Result<(), Stop> {
        // Write what is already queued in one go: one flush for the batch.
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(delivery) = next {
            self.deliver(delivery, sink).await?;
            batch += 1;
            next = if batch < 64 { live_rx.try_recv() } else { None };
        }
        Ok(())
    }

    /// Writes `first` and every other ack already done, for one flush: JetStream acks a
    /// client's window of sends together, and a write syscall per ack was a sixth of the edge's
    /// time under `append`.
    async fn on_acks(&mut self, first: Utf8Bytes, sink: &mut impl Outbound) -> Result<(), Stop> {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(frame) = next {
            self.write(sink, frame).await?;
            batch += 1;
            // Polled without a waker of its own; the loop's next turn polls it again with one.
            next = match self.appends.get_mut() {
                Some(appends) if batch < 64 => appends.next().now_or_never().flatten(),
                _ => None,
            };
        }
        Ok(())
    }

    async fn deliver(&mut self, delivery: Delivery, sink: &mut impl Outbound) -> Result<(), Stop> {
        match self.session.deliver(delivery) {
            Step::Skip => Ok(()),
            Step::Write(frame) => self.write(sink, frame).await,
            Step::Removed(left, frame) => {
                self.left(left);
                self.write(sink, frame).await
            }
            Step::TooSlow => Err(SLOW),
        }
    }

    async fn on_ctl(&mut self, ctl: Ctl, sink: &mut impl Outbound) -> Result<(), Stop> {
        match ctl {
            Ctl::Presence { join, frame } if self.session.is_current(join) => {
                self.write(sink, frame).await
            }
            Ctl::Presence { .. } => Ok(()), // left or removed since
            Ctl::CatchUp { join, seq, frame } => {
                match self.session.caught_up_to(join, seq, frame) {
                    Some(frame) => self.write(sink, frame).await,
                    None => Ok(()),
                }
            }
            Ctl::CaughtUp { join } => {
                for frame in self.session.caught_up(join) {
                    self.write(sink, frame).await?;
                }
                Ok(())
            }
            Ctl::CatchUpFailed { join, error } => {
                let Some(left) = self.session.catch_up_failed(join) else {
                    return Ok(());
                };
                let message = format!("could not catch up in {}: {}", left.room, error.message);
                self.left(left);
                let e = ApiError::new(error.code, message);
                self.write(sink, frames::error_frame(None, &e)).await
            }
        }
    }

    /// After the session left a room: its catch-up stops, the room's feed forgets this join,
    /// and the user's presence here ends.
    pub(super) fn left(&self, left: Left<AbortHandle>) {
        if let Some(reader) = left.reader {
            reader.abort();
        }
        self.state.hub.leave(&left.room, left.join);
        if !self.peer.takes_part() {
            return;
        }
        self.append_quietly(
            self.presence_event(&left.room, super::commands::PresenceKind::Offline),
        );
    }
}

fn kicked(reason: KickReason) -> Stop {
    match reason {
        KickReason::SlowConsumer => SLOW,
        KickReason::Shutdown => Stop::Close(
            close::GOING_AWAY,
            "edge shutting down: reconnect and rejoin with since",
        ),
    }
}

fn read_error(e: Error) -> Stop {
    // tungstenite reports an over-limit frame or message as a capacity error.
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
        Stop::Close(close::TOO_BIG, "frame too large")
    } else {
        Stop::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_heartbeats_of_connections_that_came_together_spread_over_the_period() {
        let every = Duration::from_secs(15);
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| first_heartbeat(&uuid::Uuid::new_v4().simple().to_string(), every))
            .collect();
        assert!(firsts.iter().all(|f| *f >= every / 10 && *f <= every));
        // Each fifth of the period gets some of them (a burst would put them all in the last).
        for fifth in 0..5u32 {
            let (from, to) = (every * fifth / 5, every * (fifth + 1) / 5);
            let n = firsts.iter().filter(|f| **f >= from && **f <= to).count();
            assert!(n > 100, "{n} first heartbeats in fifth {fifth}");
        }
        assert_eq!(first_heartbeat("not hex!", every), every);
    }
}
