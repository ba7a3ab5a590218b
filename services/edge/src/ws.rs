//! One WebSocket connection: `GET /ws?token=`.
//!
//! One task per connection owns everything about it: it reads client frames, writes server
//! frames, and keeps per joined room the last seq it wrote. Three inputs feed it:
//! - the socket (client frames, parsed by [`ClientFrame::parse`] and handled here);
//! - `live`: the bounded queue the room feeds ([`crate::hub`]) push events into;
//! - `ctl`: answers of spawned work (acks of appends, catch-up reads).
//!
//! A join with `since` runs the design's catch-up: the connection is subscribed to the room's
//! feed first (which answers the last seq it forwarded, the head), live events are buffered, the
//! stream is read from `since + 1` to the head, then the buffer is drained skipping what was
//! written. Per room the connection writes only seqs above the last one written: no duplicate,
//! and the feed and the catch-up are each gapless, so no gap.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use chatlog_events::{
    ChatEvent, Payload, RoomId, Stream, UserId,
    event::{Empty, Presence as PresenceData},
    subjects,
};
use futures::{
    FutureExt, SinkExt, StreamExt,
    stream::{FuturesUnordered, SplitSink, SplitStream},
};
use serde::Deserialize;
use sync_wrapper::SyncWrapper;
use tokio::task::AbortHandle;

use crate::{
    AppState,
    error::{ApiError, Code},
    frames::{self, ClientFrame, ServerFrame},
    http::parse_room,
    hub::{Delivery, Kick, KickReason, Kind, Subscriber},
    inbox,
    messages::Change,
};

/// Close codes the edge uses beside the standard ones.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The edge is shutting down: reconnect (to any edge) and rejoin with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// The client did not read fast enough: reconnect and rejoin with `since`.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Stored events a catch-up redacts together (one question to the history view per chunk).
const CATCH_UP_CHUNK: usize = 256;

/// A write that does not finish in this time means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws?token=`: refused before the upgrade with 403 for a foreign origin, 401 for a
/// missing or bad token, 429 for a user over its connection limit.
pub async fn upgrade(
    State(state): State<AppState>,
    client: crate::address::ClientAddr,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &state.config.allowed_origins) {
        return ApiError::new(Code::Forbidden, "websocket from a foreign origin").into_response();
    }
    let Some(token) = query.token.as_deref() else {
        return ApiError::new(Code::Unauthorized, "missing token").into_response();
    };
    let user = match crate::auth::authenticate(&state, token).await {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let limits = &state.config.limits;
    let max = limits.max_connections_per_user;
    let Some(user_seat) = state.budgets.user_seats.reserve(&user, max) else {
        let e = ApiError::rate_limited(
            format!("at most {max} connections per user"),
            Duration::from_secs(1),
        );
        return e.into_response();
    };
    let address_seat = match client.limited(&state) {
        Some(ip) => {
            let max = limits.max_connections_per_address;
            match state.budgets.address_seats.reserve(&ip, max) {
                Some(seat) => Some(seat),
                None => {
                    let e = ApiError::rate_limited(
                        format!("at most {max} connections per address"),
                        Duration::from_secs(1),
                    );
                    return e.into_response();
                }
            }
        }
        None => None,
    };
    let seat = (user_seat, address_seat);
    let max = state.config.limits.max_frame_bytes;
    // Small buffers: chat frames are small, tungstenite zero-fills its read buffer on every read
    // (with the 128 KiB default, a large share of the edge's CPU under fan-out), and both buffers
    // stay allocated for the life of the connection (an idle connection's memory).
    // Frames written in one turn still leave in one write up to 4 KiB.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(512)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| {
            // Split here, not in the task: a future keeps the storage of what it was given for
            // its whole life, and the socket (368 bytes) moved into the split would stay as dead
            // weight in every connection's task, twice (serve and run_loop).
            let (sink, stream) = socket.split();
            let fut = serve(state, user, seat, sink, stream);
            if std::env::var_os("CHATLOG_SIZES").is_some() {
                eprintln!("serve future: {} bytes", std::mem::size_of_val(&fut));
            }
            fut
        })
}

/// Browsers send `Origin`; other clients (websocat, bots) do not and are let through. A browser
/// page may connect from the edge's own origin, from localhost, or from a configured origin.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Some((_, host_port)) = origin.split_once("://") else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if host_port == host {
        return true; // same origin
    }
    let host_only = host_port
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host_port, |(h, _)| h);
    matches!(host_only, "localhost" | "127.0.0.1" | "[::1]")
}

/// Answers of spawned work, in the order the connection must apply them.
enum Ctl {
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

enum Phase {
    /// Reading the stream up to the head; live events wait in `buffer`.
    CatchingUp {
        buffer: VecDeque<Delivery>,
        reader: AbortHandle,
    },
    Live,
}

struct Joined {
    join: u64,
    /// The last seq written to this client in this room.
    written: u64,
    phase: Phase,
    /// When this connection last said it started typing here (typing events are throttled).
    typing_since: Option<std::time::Instant>,
}

#[derive(Clone, Copy)]
enum PresenceKind {
    Online,
    Offline,
}

/// Why the connection loop stops.
enum Stop {
    /// The client went away or the socket failed.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

type Sink = SplitSink<WebSocket, Message>;

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

struct Connection {
    state: AppState,
    user: UserId,
    rooms: HashMap<RoomId, Joined>,
    joins: HashMap<u64, RoomId>,
    live_tx: inbox::Sender<Delivery>,
    /// Boxed: the queue keeps a few slots after it drains, and they should be pointers, not the
    /// largest `Ctl`.
    ctl_tx: inbox::Sender<Box<Ctl>>,
    kick: Arc<Kick>,
    /// Opaque id of this socket in presence events.
    connection: String,
    /// This connection's place in its user's notification feed.
    notify_join: u64,
    /// Appends in flight, each answering its ack or error frame.
    /// Made at the first send: an empty `FuturesUnordered` still allocates ~200 bytes.
    appends: SyncWrapper<Option<Appends>>,
}

impl Connection {
    fn new(
        state: AppState,
        user: UserId,
    ) -> (Self, inbox::Receiver<Delivery>, inbox::Receiver<Box<Ctl>>) {
        let limits = &state.config.limits;
        let (live_tx, live_rx) = inbox::inbox(limits.outbound_queue);
        let (ctl_tx, ctl_rx) = inbox::inbox(256);
        let conn = Self {
            state,
            user,
            rooms: HashMap::new(),
            joins: HashMap::new(),
            live_tx,
            ctl_tx,
            kick: Arc::new(Kick::default()),
            connection: uuid::Uuid::new_v4().simple().to_string(),
            notify_join: 0,
            appends: SyncWrapper::new(None),
        };
        (conn, live_rx, ctl_rx)
    }
}

impl Connection {
    async fn run_loop(
        &mut self,
        mut sink: Sink,
        mut stream: SplitStream<WebSocket>,
        mut live_rx: inbox::Receiver<Delivery>,
        mut ctl_rx: inbox::Receiver<Box<Ctl>>,
    ) {
        // Presence heartbeats, and pings: a peer silent for two ping periods is gone (a dead
        // network sends no close), and its presence ends. One timer for both, set to whichever
        // is due first (a timer is 112 bytes of every connection).
        let every = self.state.config.limits.heartbeat;
        let ping_every = self.state.config.limits.ping;
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
                        step = if heard.elapsed() > ping_every * 2 {
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
                    None | Some(Ok(Message::Close(_))) => Err(Stop::Gone),
                    Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text.as_str(), &mut sink)).await,
                    Some(Ok(Message::Binary(_))) => {
                        let e = ApiError::bad_request("binary frames are not supported, send json text");
                        self.write(&mut sink, frames::error_frame(None, &e)).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
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
type Seat = (
    crate::limits::Seat<UserId>,
    Option<crate::limits::Seat<std::net::IpAddr>>,
);

/// Runs one upgraded connection until it closes, then leaves every room it joined.
async fn serve(
    state: AppState,
    user: UserId,
    seat: Seat,
    sink: Sink,
    stream: SplitStream<WebSocket>,
) {
    let (mut conn, live_rx, ctl_rx) = Connection::new(state, user);
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
    let rooms: Vec<RoomId> = conn.rooms.keys().cloned().collect();
    for room in rooms {
        conn.leave_room(&room);
    }
    conn.state.users.unsubscribe(&conn.user, conn.notify_join);
    conn.state.metrics.connection_closed();
    drop(seat);
}

impl Connection {
    /// Writes one frame (flushed at the end of the loop turn), giving up when the client is
    /// kicked or does not read for [`WRITE_TIMEOUT`].
    async fn write(&self, sink: &mut Sink, frame: Utf8Bytes) -> Result<(), Stop> {
        let message = Message::Text(frame);
        // The common case, room in the socket's buffer, needs no timer: try once without one. A
        // feed that did not complete did not take the message, so it is fed again, guarded.
        if let Some(done) = sink.feed(message.clone()).now_or_never() {
            return done.map_err(|_| Stop::Gone);
        }
        Box::pin(self.guard(sink.feed(message))).await
    }

    /// Flushes what was fed this turn, without a timer when the socket takes it at once.
    async fn flush(&self, sink: &mut Sink) -> Result<(), Stop> {
        if let Some(done) = sink.flush().now_or_never() {
            return done.map_err(|_| Stop::Gone);
        }
        Box::pin(self.guard(sink.flush())).await
    }

    /// Boxed where it is awaited: it is the slow path (a socket that did not take the frame at
    /// once), and its timer inline would make every connection's task larger.
    async fn guard(&self, io: impl Future<Output = Result<(), axum::Error>>) -> Result<(), Stop> {
        tokio::select! {
            r = io => r.map_err(|_| Stop::Gone),
            reason = self.kick.kicked() => Err(kicked(reason)),
            _ = tokio::time::sleep(WRITE_TIMEOUT) => Err(Stop::Close(close::SLOW_CONSUMER, "slow consumer: rejoin with since")),
        }
    }

    async fn on_live(
        &mut self,
        first: Delivery,
        live_rx: &mut inbox::Receiver<Delivery>,
        sink: &mut Sink,
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
    async fn on_acks(&mut self, first: Utf8Bytes, sink: &mut Sink) -> Result<(), Stop> {
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

    async fn deliver(&mut self, delivery: Delivery, sink: &mut Sink) -> Result<(), Stop> {
        let max_buffer = self.state.config.limits.catch_up_buffer;
        match delivery.kind {
            Kind::Event => {}
            Kind::Notification => return self.write(sink, delivery.frame).await,
            Kind::Presence if self.joins.contains_key(&delivery.join) => {
                return self.write(sink, delivery.frame).await;
            }
            Kind::Presence => return Ok(()),
            Kind::Removed => {
                // Removed from the room (on every edge, by the feed): out at once, told why.
                if let Some(room) = self.joins.get(&delivery.join).cloned() {
                    self.leave_room(&room);
                    return self.write(sink, delivery.frame).await;
                }
                return Ok(());
            }
        }
        let Some(room) = self.joins.get(&delivery.join) else {
            return Ok(()); // left since
        };
        let Some(joined) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        match &mut joined.phase {
            Phase::CatchingUp { buffer, .. } => {
                if buffer.len() >= max_buffer {
                    return Err(Stop::Close(
                        close::SLOW_CONSUMER,
                        "slow consumer: rejoin with since",
                    ));
                }
                buffer.push_back(delivery);
                Ok(())
            }
            Phase::Live => {
                if delivery.seq <= joined.written {
                    return Ok(());
                }
                joined.written = delivery.seq;
                self.write(sink, delivery.frame).await
            }
        }
    }

    async fn on_ctl(&mut self, ctl: Ctl, sink: &mut Sink) -> Result<(), Stop> {
        match ctl {
            Ctl::Presence { join, frame } => {
                if self.joined_mut(join).is_none() {
                    return Ok(()); // left or removed since
                }
                self.write(sink, frame).await
            }
            Ctl::CatchUp { join, seq, frame } => {
                let Some(joined) = self.joined_mut(join) else {
                    return Ok(());
                };
                if seq <= joined.written {
                    return Ok(());
                }
                joined.written = seq;
                self.write(sink, frame).await
            }
            Ctl::CaughtUp { join } => {
                let Some(joined) = self.joined_mut(join) else {
                    return Ok(());
                };
                let buffered = match std::mem::replace(&mut joined.phase, Phase::Live) {
                    Phase::CatchingUp { buffer, .. } => buffer,
                    Phase::Live => VecDeque::new(),
                };
                for delivery in buffered {
                    let Some(joined) = self.joined_mut(join) else {
                        break;
                    };
                    if delivery.seq > joined.written {
                        joined.written = delivery.seq;
                        self.write(sink, delivery.frame).await?;
                    }
                }
                Ok(())
            }
            Ctl::CatchUpFailed { join, error } => {
                if let Some(room) = self.joins.get(&join).cloned() {
                    self.leave_room(&room);
                    let message = format!("could not catch up in {room}: {}", error.message);
                    let e = ApiError::new(error.code, message);
                    self.write(sink, frames::error_frame(None, &e)).await?;
                }
                Ok(())
            }
        }
    }

    fn joined_mut(&mut self, join: u64) -> Option<&mut Joined> {
        let room = self.joins.get(&join)?;
        self.rooms.get_mut(room).filter(|j| j.join == join)
    }

    async fn on_text(&mut self, text: &str, sink: &mut Sink) -> Result<(), Stop> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                return self
                    .write(sink, frames::error_frame(e.id.as_deref(), &e.error))
                    .await;
            }
        };
        let (id, answer) = match frame {
            ClientFrame::Ping => (None, Ok(Some(ServerFrame::Pong.to_text()))),
            ClientFrame::Join { room, since, id } => {
                let answer = match self.take_signal() {
                    Ok(()) => self.join(&room, since, sink).await,
                    Err(e) => Err(e),
                };
                (id, answer)
            }
            ClientFrame::Leave { room, id } => {
                (id, self.take_signal().and_then(|()| self.leave(&room)))
            }
            ClientFrame::Send {
                room,
                text,
                id,
                reply_to,
            } => {
                let answer = self
                    .send(&room, text, id.as_deref(), reply_to.as_deref())
                    .await;
                (id, answer)
            }
            ClientFrame::Edit {
                room,
                message_id,
                text,
                id,
            } => {
                let answer = self
                    .change(&room, &message_id, id.as_deref(), Change::Edit { text })
                    .await;
                (id, answer)
            }
            ClientFrame::Delete {
                room,
                message_id,
                id,
            } => {
                let answer = self
                    .change(&room, &message_id, id.as_deref(), Change::Delete)
                    .await;
                (id, answer)
            }
            ClientFrame::React {
                room,
                message_id,
                emoji,
                remove,
                id,
            } => {
                let change = Change::React {
                    emoji,
                    remove: remove.unwrap_or(false),
                };
                let answer = self.change(&room, &message_id, id.as_deref(), change).await;
                (id, answer)
            }
            ClientFrame::Typing { room, active, id } => (
                id,
                self.take_signal().and_then(|()| self.typing(&room, active)),
            ),
            ClientFrame::Read { room, seq, id } => {
                let answer = self.read(&room, seq, id.as_deref()).await;
                (id, answer)
            }
        };
        match answer {
            Ok(None) => Ok(()),
            Ok(Some(frame)) => self.write(sink, frame).await,
            Err(e) => {
                self.write(sink, frames::error_frame(id.as_deref(), &e))
                    .await
            }
        }
    }

    async fn join(
        &mut self,
        room: &str,
        since: Option<u64>,
        sink: &mut Sink,
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        let room = parse_room(room)?;
        if self.rooms.contains_key(&room) {
            // Joining again restarts the room's delivery from `since` (or from now).
            self.leave_room(&room);
        }
        let max = self.state.config.limits.max_rooms_per_connection;
        if self.rooms.len() >= max {
            return Err(ApiError::bad_request(format!(
                "at most {max} rooms per connection"
            )));
        }
        if self.state.rooms.get(&room).await?.is_none() {
            return Err(ApiError::not_found(&format!("room {room}")));
        }
        let join = self.state.hub.next_join();
        let subscriber = Subscriber {
            join,
            user: self.user.clone(),
            tx: self.live_tx.clone(),
            kick: self.kick.clone(),
        };
        let head = self.state.hub.join(&room, subscriber).await?;
        // Decided once subscribed, on the membership as of the room's head (which the feed has
        // not passed): a removal after it reaches this socket through the feed.
        if let Err(e) = self.become_member(&room).await {
            self.state.hub.leave(&room, join);
            return Err(e);
        }
        let phase = match since {
            Some(since) if since < head => Phase::CatchingUp {
                buffer: VecDeque::new(),
                reader: self.spawn_catch_up(&room, join, since, head),
            },
            _ => Phase::Live,
        };
        let written = since.unwrap_or(head);
        self.joins.insert(join, room.clone());
        self.rooms.insert(
            room.clone(),
            Joined {
                join,
                written,
                phase,
                typing_since: None,
            },
        );
        let joined = ServerFrame::Joined {
            room: room.as_str(),
            head,
        };
        // Written now, before any event of the room can be.
        self.write(sink, joined.to_text())
            .await
            .map_err(|_| ApiError::new(Code::Internal, "connection closing"))?;
        self.announce(&room, join);
        Ok(None)
    }

    /// Decides a join on the room as of its head: refused for a non-member of a private room;
    /// a first join of a public room appends `chat.member.joined`, stored before `joined` is
    /// answered (a mention sent after that notifies the new member).
    async fn become_member(&self, room: &RoomId) -> Result<(), ApiError> {
        let asked = std::slice::from_ref(&self.user);
        let (view, _) = match self
            .state
            .rooms
            .at_head(room, &self.state.views, asked, |_| true)
            .await
        {
            Ok(found) => found,
            // A public room is open to all: without a view to say whether the user is a member
            // already, the join is recorded again (the views fold a repeated membership once),
            // and joining never waits for a view that is down.
            Err(e) if e.code == Code::Unavailable => match self.state.rooms.get(room).await? {
                Some(found) if !found.private => (found, 0),
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let given = crate::decide::Given {
            room: &view,
            message: None,
        };
        let payloads = crate::decide::decide(&self.user, &given, crate::decide::Command::Join)?;
        for payload in payloads {
            let event = ChatEvent::in_room(room, self.user.clone(), "edge", payload);
            self.state.log.append(&event).await?;
        }
        Ok(())
    }

    /// After a join: the user is online here; the client gets the room's presence once the view
    /// has seen it come online.
    fn announce(&self, room: &RoomId, join: u64) {
        let state = self.state.clone();
        let ctl = self.ctl_tx.clone();
        let room = room.clone();
        let online = self.presence_event(&room, PresenceKind::Online);
        tokio::spawn(async move {
            use chatlog_events::queries::{PresenceAnswer, PresenceRequest, presence};
            let seq = match state.log.append(&online).await {
                Ok(a) => Some(a.seq),
                Err(e) => {
                    tracing::debug!(room = %room, error = %e, "appending online failed");
                    None
                }
            };
            let request = PresenceRequest { room: room.clone() };
            if let Ok(answer) = state
                .views
                .ask_at::<_, PresenceAnswer>(presence::VIEW, presence::ROOM, &request, seq)
                .await
            {
                let frame = frames::presence_frame(room.as_str(), &answer);
                let _ = ctl.send(Box::new(Ctl::Presence { join, frame })).await;
            }
        });
    }

    fn presence_event(&self, room: &RoomId, kind: PresenceKind) -> ChatEvent {
        let data = PresenceData::of(self.connection.clone());
        let payload = match kind {
            PresenceKind::Online => Payload::PresenceOnline(data),
            PresenceKind::Offline => Payload::PresenceOffline(data),
        };
        ChatEvent::in_room(room, self.user.clone(), "edge", payload)
    }

    /// Appends in the background, answering nobody (presence and typing have no ack).
    fn append_quietly(&self, event: ChatEvent) {
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(e) = state.log.append(&event).await {
                tracing::debug!(error = %e, "presence append failed");
            }
        });
    }

    /// One heartbeat per period for all the rooms the connection is in: appended on the first
    /// room's subject, naming every room (a connection in 100 rooms is one append, not 100).
    fn heartbeat(&self) {
        let mut rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        rooms.sort();
        let Some(first) = rooms.first().cloned() else {
            return;
        };
        let data = PresenceData {
            connection: self.connection.clone(),
            rooms,
        };
        self.append_quietly(ChatEvent::in_room(
            &first,
            self.user.clone(),
            "edge",
            Payload::PresenceHeartbeat(data),
        ));
    }

    /// `typing`: started at most once per throttle period per room, stopped once.
    fn typing(&mut self, room: &str, active: bool) -> Result<Option<Utf8Bytes>, ApiError> {
        let room = parse_room(room)?;
        let throttle = self.state.config.limits.typing_throttle;
        let user = self.user.clone();
        let Some(joined) = self.rooms.get_mut(&room) else {
            return Err(ApiError::bad_request(format!(
                "join {room} before typing in it"
            )));
        };
        let now = std::time::Instant::now();
        let payload = match (active, joined.typing_since) {
            (true, Some(since)) if now.duration_since(since) < throttle => return Ok(None),
            (true, _) => {
                joined.typing_since = Some(now);
                Payload::TypingStarted(Empty {})
            }
            (false, Some(_)) => {
                joined.typing_since = None;
                Payload::TypingStopped(Empty {})
            }
            (false, None) => return Ok(None),
        };
        self.append_quietly(ChatEvent::in_room(&room, user, "edge", payload));
        Ok(None)
    }

    /// `read`: the user has read `room` up to `seq`; acked like a send.
    async fn read(
        &mut self,
        room: &str,
        seq: u64,
        id: Option<&str>,
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        self.take_send()?;
        let room = parse_room(room)?;
        let event = crate::messages::read_marker(&self.state, &self.user, &room, seq, id).await?;
        self.start_append(event).await;
        Ok(None)
    }

    /// Reads the room's stored events in `(since, head]` into `ctl`, in order, as they are to be
    /// served now ([`crate::served`]): read in chunks, each redacted before it is passed on.
    fn spawn_catch_up(&self, room: &RoomId, join: u64, since: u64, head: u64) -> AbortHandle {
        let log = self.state.log.clone();
        let views = self.state.views.clone();
        let ctl = self.ctl_tx.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let _in_flight = crate::metrics::counters::CatchUp::start();
            let subject = subjects::room(&room);
            let (tx, mut rx) = tokio::sync::mpsc::channel(CATCH_UP_CHUNK);
            // The sender lives in the read alone: the chunks end when the read does.
            let read = async move {
                log.read_each(Stream::Rooms, &subject, since + 1, head, usize::MAX, |m| {
                    let tx = tx.clone();
                    async move { tx.send(m).await.is_ok() }
                })
                .await
            };
            let pass_on = async {
                let mut chunk = Vec::with_capacity(CATCH_UP_CHUNK);
                while rx.recv_many(&mut chunk, CATCH_UP_CHUNK).await > 0 {
                    crate::served::as_now(&views, &room, head, &mut chunk).await?;
                    for m in chunk.drain(..) {
                        let Some(frame) = frames::event_frame(room.as_str(), m.seq, &m.body) else {
                            continue;
                        };
                        let sent = ctl.send(Box::new(Ctl::CatchUp {
                            join,
                            seq: m.seq,
                            frame,
                        }));
                        if sent.await.is_err() {
                            return Ok(()); // the connection is gone
                        }
                    }
                }
                Ok::<(), ApiError>(())
            };
            let (read, passed) = tokio::join!(read, pass_on);
            let done = match (read, passed) {
                (Ok(_), Ok(())) => Ctl::CaughtUp { join },
                (Err(e), _) => Ctl::CatchUpFailed {
                    join,
                    error: e.into(),
                },
                (_, Err(error)) => Ctl::CatchUpFailed { join, error },
            };
            let _ = ctl.send(Box::new(done)).await;
        })
        .abort_handle()
    }

    fn leave(&mut self, room: &str) -> Result<Option<Utf8Bytes>, ApiError> {
        let room = parse_room(room)?;
        if !self.leave_room(&room) {
            return Err(ApiError::bad_request(format!("not joined to {room}")));
        }
        Ok(Some(
            ServerFrame::Left {
                room: room.as_str(),
            }
            .to_text(),
        ))
    }

    fn leave_room(&mut self, room: &RoomId) -> bool {
        let Some(joined) = self.rooms.remove(room) else {
            return false;
        };
        if let Phase::CatchingUp { reader, .. } = &joined.phase {
            reader.abort();
        }
        self.joins.remove(&joined.join);
        self.state.hub.leave(room, joined.join);
        self.append_quietly(self.presence_event(room, PresenceKind::Offline));
        true
    }

    /// Validates a `send`, then starts its append; the ack (or error) follows from `appends`.
    async fn send(
        &mut self,
        room: &str,
        text: String,
        id: Option<&str>,
        reply_to: Option<&str>,
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        self.take_send()?;
        let room = parse_room(room)?;
        let event =
            crate::messages::post(&self.state, &self.user, &room, text, id, reply_to).await?;
        self.start_append(event).await;
        Ok(None)
    }

    /// Validates an edit, delete or reaction, then appends it in the background.
    async fn change(
        &mut self,
        room: &str,
        message_id: &str,
        id: Option<&str>,
        change: Change,
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        self.take_send()?;
        let room = parse_room(room)?;
        let event =
            crate::messages::change(&self.state, &self.user, &room, message_id, id, change).await?;
        self.start_append(event).await;
        Ok(None)
    }

    /// Every write a client asks for counts against its user's append budget (shared by all of
    /// the user's connections and its HTTP requests on this edge).
    fn take_send(&mut self) -> Result<(), ApiError> {
        crate::limits::take_append(&self.state, &self.user)
    }

    /// `typing`, `join` and `leave` count against the user's budget for them.
    fn take_signal(&self) -> Result<(), ApiError> {
        self.state
            .budgets
            .signals
            .take(&self.user)
            .map_err(|wait| ApiError::rate_limited("too many typing, join or leave frames", wait))
    }

    /// Starts appending `event`: handed to JetStream now (a connection's appends are stored in
    /// the order it sent them); its ack (or error) frame is written when it completes, by the
    /// connection's own loop: appends are pipelined, with no task or channel hop of their own.
    async fn start_append(&mut self, event: ChatEvent) {
        let state = self.state.clone();
        let id = event.id.to_string();
        let started = std::time::Instant::now();
        let acked = self.state.log.append_in_order(&event).await;
        let appends = self
            .appends
            .get_mut()
            .get_or_insert_with(FuturesUnordered::new);
        appends.push(Box::pin(async move {
            match acked.await {
                Ok(appended) => {
                    state.metrics.appended(started.elapsed());
                    ServerFrame::Ack {
                        id: &id,
                        seq: appended.seq,
                    }
                    .to_text()
                }
                Err(e) => frames::error_frame(Some(&id), &e.into()),
            }
        }));
    }
}

fn kicked(reason: KickReason) -> Stop {
    match reason {
        KickReason::SlowConsumer => {
            Stop::Close(close::SLOW_CONSUMER, "slow consumer: rejoin with since")
        }
        KickReason::Shutdown => Stop::Close(
            close::GOING_AWAY,
            "edge shutting down: reconnect and rejoin with since",
        ),
    }
}

fn read_error(e: axum::Error) -> Stop {
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

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

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

    #[test]
    fn origins_allowed_are_same_origin_localhost_and_configured() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "chat.example:8080"), none));
        assert!(origin_allowed(
            &headers(Some("http://chat.example:8080"), "chat.example:8080"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://localhost:5173"), "chat.example:8080"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://localhost.evil.example"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "chat.example"),
            none
        ));
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "api.example"),
            &allowed
        ));
    }
}
