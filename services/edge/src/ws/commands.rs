//! Each client frame, from parse to append: checked against the user's budgets
//! ([`crate::limits`]), decided on the room as of its head ([`crate::decide`]), built into its
//! event and appended. A command answers at once (`joined`, `left`, `pong`, an error) or later
//! (an append's `ack`, written by the connection's loop).

use axum::extract::ws::Utf8Bytes;
use chatlog_events::{
    ChatEvent, Payload, RoomId, Stream,
    event::{Empty, Presence as PresenceData},
    subjects,
};
use futures::stream::FuturesUnordered;
use tokio::task::AbortHandle;

use super::{
    connection::{Connection, Ctl, Outbound, Stop},
    session::Typing,
};
use crate::{
    AppState,
    error::{ApiError, Code},
    frames::{self, ClientFrame, ServerFrame},
    http::parse_room,
    hub::Subscriber,
    inbox,
    messages::Change,
};

/// Stored events a catch-up redacts together (one question to the history view per chunk).
const CATCH_UP_CHUNK: usize = 256;

#[derive(Clone, Copy)]
pub(super) enum PresenceKind {
    Online,
    Offline,
}

impl Connection {
    pub(super) async fn on_text(
        &mut self,
        text: &str,
        sink: &mut impl Outbound,
    ) -> Result<(), Stop> {
        match ClientFrame::parse(text) {
            Ok(frame) => self.on_frame(frame, sink).await,
            Err(e) => {
                self.write(sink, frames::error_frame(e.id.as_deref(), &e.error))
                    .await
            }
        }
    }

    /// Does what `frame` asks, and writes its answer when it has one now.
    pub(super) async fn on_frame(
        &mut self,
        frame: ClientFrame,
        sink: &mut impl Outbound,
    ) -> Result<(), Stop> {
        let (id, answer) = match frame {
            ClientFrame::Ping => (None, Ok(Some(ServerFrame::Pong.to_text()))),
            ClientFrame::Join {
                room,
                since,
                last,
                id,
            } => {
                let answer = match self.take_signal() {
                    Ok(()) => self.join(&room, since, last, sink).await,
                    Err(e) => Err(e),
                };
                (id, answer)
            }
            // Each asks a view: counted with the other signals, so a loop of them is refused.
            ClientFrame::Rooms { id } => match self.take_signal() {
                Ok(()) => (id, self.rooms().await),
                Err(e) => (id, Err(e)),
            },
            ClientFrame::Who { room, id } => match self.take_signal() {
                Ok(()) => (id, self.who(&room).await),
                Err(e) => (id, Err(e)),
            },
            ClientFrame::Leave { room, id } => {
                (id, self.take_signal().and_then(|()| self.leave(&room)))
            }
            ClientFrame::Send {
                room,
                text,
                id,
                reply_to,
                attachments,
            } => {
                let answer = self
                    .send(
                        &room,
                        text,
                        id.as_deref(),
                        reply_to.as_deref(),
                        &attachments,
                    )
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
        last: Option<u32>,
        sink: &mut impl Outbound,
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        let room = parse_room(room)?;
        if last.is_some_and(|last| last > frames::MAX_LAST) {
            return Err(ApiError::bad_request(format!(
                "last must be at most {}",
                frames::MAX_LAST
            )));
        }
        if let Some(left) = self.session.leave(&room) {
            // Joining again restarts the room's delivery from `since` (or from now).
            self.left(left);
        }
        let max = self.state.config.limits.max_rooms_per_connection;
        if self.session.room_count() >= max {
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
        // not passed): a removal after it reaches this socket through the feed. A reader that
        // takes no part only needs to see the room.
        let decided = if self.peer.takes_part() {
            self.become_member(&room).await
        } else {
            let (state, user) = (&self.state, &self.user);
            state
                .rooms
                .visible(&room, user, &state.views)
                .await
                .map(drop)
        };
        if let Err(e) = decided {
            self.state.hub.leave(&room, join);
            return Err(e);
        }
        let since = match (since, last) {
            (None, Some(last)) if last > 0 => Some(self.backlog(&room, last, head).await),
            _ => since,
        };
        let (state, ctl) = (&self.state, &self.ctl_tx);
        let catch_up = |since| Self::spawn_catch_up(state, ctl, &room, (join, since, head));
        self.session
            .joined(room.clone(), join, since, head, catch_up);
        let joined = ServerFrame::Joined {
            room: room.as_str(),
            head,
        };
        // Written now, before any event of the room can be.
        self.write(sink, joined.to_text())
            .await
            .map_err(|_| ApiError::new(Code::Internal, "connection closing"))?;
        if self.peer.takes_part() {
            self.announce(&room, join);
        }
        Ok(None)
    }

    /// Where a join that starts with the room's last `last` messages catches up from: just
    /// before the oldest of them (its edits and reactions follow), or the head when the room has
    /// none. Without a history view to ask, the join starts at the head rather than fail.
    async fn backlog(&self, room: &RoomId, last: u32, head: u64) -> u64 {
        use chatlog_events::queries::{MessagesAnswer, MessagesRequest, history};
        let request = MessagesRequest {
            room: room.clone(),
            before: None,
            limit: last as usize,
        };
        let views = &self.state.views;
        match views
            .ask_at::<_, MessagesAnswer>(history::VIEW, history::MESSAGES, &request, Some(head))
            .await
        {
            Ok(page) => page.messages.first().map_or(head, |m| m.seq - 1),
            Err(e) => {
                tracing::debug!(room = %room, error = %e, "no backlog for a join: starting at the head");
                head
            }
        }
    }

    /// `rooms`: the rooms the user may see, as `GET /api/rooms` lists them.
    async fn rooms(&self) -> Result<Option<Utf8Bytes>, ApiError> {
        let limit = chatlog_events::queries::DEFAULT_ROOMS;
        let rooms = crate::http::rooms_of(&self.state, &self.user, None, limit).await?;
        Ok(Some(frames::rooms_frame(&rooms)))
    }

    /// `who`: who is online and typing in a room the user may see.
    async fn who(&self, room: &str) -> Result<Option<Utf8Bytes>, ApiError> {
        let room = parse_room(room)?;
        let answer = crate::http::presence_of(&self.state, &self.user, room.clone()).await?;
        Ok(Some(frames::who_frame(room.as_str(), &answer)))
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

    pub(super) fn presence_event(&self, room: &RoomId, kind: PresenceKind) -> ChatEvent {
        let data = PresenceData::of(self.connection.clone());
        let payload = match kind {
            PresenceKind::Online => Payload::PresenceOnline(data),
            PresenceKind::Offline => Payload::PresenceOffline(data),
        };
        ChatEvent::in_room(room, self.user.clone(), "edge", payload)
    }

    /// Appends in the background, answering nobody (presence and typing have no ack).
    pub(super) fn append_quietly(&self, event: ChatEvent) {
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(e) = state.log.append(&event).await {
                tracing::debug!(error = %e, "presence append failed");
            }
        });
    }

    /// One heartbeat per period for all the rooms the connection is in: appended on the first
    /// room's subject, naming every room (a connection in 100 rooms is one append, not 100).
    pub(super) fn heartbeat(&self) {
        if !self.peer.takes_part() {
            return;
        }
        let rooms = self.session.rooms();
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
        let now = std::time::Instant::now();
        let Some(typing) = self.session.typing(&room, active, now, throttle) else {
            return Err(ApiError::bad_request(format!(
                "join {room} before typing in it"
            )));
        };
        let payload = match typing {
            Some(Typing::Started) => Payload::TypingStarted(Empty {}),
            Some(Typing::Stopped) => Payload::TypingStopped(Empty {}),
            None => return Ok(None),
        };
        let event = ChatEvent::in_room(&room, self.user.clone(), "edge", payload);
        self.append_quietly(event);
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
        self.start_append(event, Vec::new()).await;
        Ok(None)
    }

    /// Reads the room's stored events in `(since, head]` into `ctl`, in order, as they are to be
    /// served now ([`crate::served`]): read in chunks, each redacted before it is passed on.
    fn spawn_catch_up(
        state: &AppState,
        ctl: &inbox::Sender<Box<Ctl>>,
        room: &RoomId,
        (join, since, head): (u64, u64, u64),
    ) -> AbortHandle {
        let log = state.log.clone();
        let views = state.views.clone();
        let ctl = ctl.clone();
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
        let Some(left) = self.session.leave(&room) else {
            return Err(ApiError::bad_request(format!("not joined to {room}")));
        };
        self.left(left);
        Ok(Some(
            ServerFrame::Left {
                room: room.as_str(),
            }
            .to_text(),
        ))
    }

    /// Validates a `send`, then starts its append; the ack (or error) follows from `appends`.
    async fn send(
        &mut self,
        room: &str,
        text: String,
        id: Option<&str>,
        reply_to: Option<&str>,
        attachments: &[String],
    ) -> Result<Option<Utf8Bytes>, ApiError> {
        self.take_send()?;
        let room = parse_room(room)?;
        let event = crate::messages::post(
            &self.state,
            &self.user,
            &room,
            crate::messages::Post {
                text,
                id,
                reply_to,
                attachments,
            },
        )
        .await?;
        self.start_append(event, Vec::new()).await;
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
        let (event, files) =
            crate::messages::change(&self.state, &self.user, &room, message_id, id, change).await?;
        self.start_append(event, files).await;
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
    /// `released`: the files of a message this event deletes, released once it is stored.
    async fn start_append(&mut self, event: ChatEvent, released: Vec<crate::files::FileId>) {
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
                    crate::files::sweep::release(&state, released);
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
