//! The line protocol (docs/protocol.md §7): chat over plain TCP for `nc` and `telnet`.
//!
//! Another adapter of the same connection ([`crate::ws::connection`]): after `LOGIN`, each line
//! becomes a client frame ([`parse`]) and each server frame is rendered as lines
//! ([`Renderer`]). Limits, seats, catch-up with `since`, slow-consumer kicks and shutdown are
//! the WebSocket's own. A line client may lurk in silence: it is not pinged, and TCP keepalive
//! finds one whose network went away.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Error, extract::ws::Message};
use bytes::BytesMut;
use chatlog_events::UserId;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

use crate::{
    AppState,
    accounts::Holder,
    address::ClientAddr,
    error::{ApiError, Code},
    frames::ClientFrame,
    ws::connection::{Incoming, Peer},
};

/// The longest line a client may send, in bytes, its `\n` included.
pub const MAX_LINE: usize = 4096;

/// Messages a `JOIN` without `since` starts with.
pub const JOIN_BACKLOG: u32 = 20;

/// How long a connection may take to log in.
const LOGIN_PATIENCE: Duration = Duration::from_secs(60);

/// Written lines held before the writer waits for the socket.
const WRITE_BUFFER: usize = 64 * 1024;

/// A client line.
#[derive(Debug, PartialEq)]
pub enum Line {
    Login {
        user: String,
        password: Option<String>,
    },
    /// A command the connection carries out as it would the frame.
    Frame(ClientFrame),
    /// Text for the room joined last.
    Say(String),
    Quit,
    /// Nothing to do (an empty line).
    Nothing,
    Bad(ApiError),
}

/// Parses one line (without its `\n`). Commands are upper case (`JOIN`), or any case after a
/// slash (`/join`), as IRC users type them; any other line is text for the room joined last.
pub fn parse(line: &str) -> Line {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Line::Nothing;
    }
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let command = match word.strip_prefix('/') {
        Some(command) => command.to_ascii_uppercase(),
        None if is_command(word) => word.to_string(),
        None => return Line::Say(line.to_string()),
    };
    let args: Vec<&str> = rest.split_whitespace().collect();
    let bad = |usage: &str| Line::Bad(ApiError::bad_request(format!("usage: {usage}")));
    match (command.as_str(), args.as_slice()) {
        ("LOGIN", [user]) => Line::Login {
            user: user.to_string(),
            password: None,
        },
        ("LOGIN", [user, password]) => Line::Login {
            user: user.to_string(),
            password: Some(password.to_string()),
        },
        ("LOGIN", _) => bad("LOGIN <user> [<password>]"),
        ("JOIN", [room]) => Line::Frame(ClientFrame::Join {
            room: room.to_string(),
            since: None,
            last: Some(JOIN_BACKLOG),
            id: None,
        }),
        ("JOIN", [room, since]) => match since.parse() {
            Ok(since) => Line::Frame(ClientFrame::Join {
                room: room.to_string(),
                since: Some(since),
                last: None,
                id: None,
            }),
            Err(_) => bad("JOIN <room> [<since>], since a number"),
        },
        ("JOIN", _) => bad("JOIN <room> [<since>]"),
        ("MSG", [room, _, ..]) => {
            // The text as typed: everything after the room and one space.
            let text = rest.trim_start().split_once(' ').map_or("", |(_, t)| t);
            Line::Frame(ClientFrame::Send {
                room: room.to_string(),
                text: text.to_string(),
                id: None,
                reply_to: None,
                attachments: Vec::new(),
            })
        }
        ("MSG", _) => bad("MSG <room> <text>"),
        ("LEAVE", [room]) => Line::Frame(ClientFrame::Leave {
            room: room.to_string(),
            id: None,
        }),
        ("LEAVE", _) => bad("LEAVE <room>"),
        ("ROOMS", []) => Line::Frame(ClientFrame::Rooms { id: None }),
        ("ROOMS", _) => bad("ROOMS"),
        ("WHO", [room]) => Line::Frame(ClientFrame::Who {
            room: room.to_string(),
            id: None,
        }),
        ("WHO", _) => bad("WHO <room>"),
        ("QUIT", _) => Line::Quit,
        (other, _) => Line::Bad(ApiError::bad_request(format!(
            "unknown command {}: LOGIN, JOIN, MSG, LEAVE, ROOMS, WHO, QUIT",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

fn is_command(word: &str) -> bool {
    matches!(
        word,
        "LOGIN" | "JOIN" | "MSG" | "LEAVE" | "ROOMS" | "WHO" | "QUIT"
    )
}

/// What the reader found: a line, or input that is none.
#[derive(Debug, PartialEq)]
pub enum Read {
    Line(String),
    TooLong,
    NotUtf8,
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes. A longer line is reported
/// once and skipped up to its end; the lines after it are read as usual. Cancel-safe: what was
/// read stays in the buffer.
pub struct Lines<R> {
    reader: R,
    buffer: BytesMut,
    /// Inside a line that was too long: skip up to its `\n`.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: BytesMut::new(),
            skipping: false,
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for Lines<R> {
    type Item = io::Result<Read>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(end) = this.buffer.iter().position(|b| *b == b'\n') {
                let line = this.buffer.split_to(end + 1);
                if std::mem::take(&mut this.skipping) {
                    continue;
                }
                if line.len() > MAX_LINE {
                    return Poll::Ready(Some(Ok(Read::TooLong)));
                }
                let line = &line[..end];
                return Poll::Ready(Some(Ok(match std::str::from_utf8(line) {
                    Ok(text) => Read::Line(text.to_string()),
                    Err(_) => Read::NotUtf8,
                })));
            }
            if this.buffer.len() > MAX_LINE {
                this.buffer.clear();
                if !std::mem::replace(&mut this.skipping, true) {
                    return Poll::Ready(Some(Ok(Read::TooLong)));
                }
            }
            this.buffer.reserve(MAX_LINE);
            let spare = this.buffer.spare_capacity_mut();
            let mut read = ReadBuf::uninit(&mut spare[..MAX_LINE]);
            ready!(Pin::new(&mut this.reader).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(None);
            }
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { this.buffer.set_len(this.buffer.len() + n) };
        }
    }
}

/// Escapes what a line cannot hold: a newline in a text is sent as `\n`.
fn escape(text: &str) -> Cow<'_, str> {
    if text.contains('\n') {
        Cow::Owned(text.replace('\n', "\\n"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The room a bare line of text goes to: the one joined last, while it is joined.
#[derive(Clone, Default)]
pub struct Current(Arc<Mutex<Option<String>>>);

impl Current {
    fn set(&self, room: Option<&str>) {
        if let Ok(mut current) = self.0.lock() {
            *current = room.map(str::to_string);
        }
    }

    fn clear_if(&self, room: &str) {
        if let Ok(mut current) = self.0.lock()
            && current.as_deref() == Some(room)
        {
            *current = None;
        }
    }

    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|c| c.clone())
    }
}

/// A server frame, as much of it as a line shows: one flat struct of borrowed fields (an
/// internally tagged enum would buffer the whole frame first), parsed once per connection.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Cow<'a, str>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    head: u64,
    #[serde(borrow, default)]
    code: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    online: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    rooms: Vec<Room<'a>>,
    #[serde(borrow, default)]
    event: Option<Event<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow, default)]
    data: EventData<'a>,
}

#[derive(Deserialize, Default)]
struct EventData<'a> {
    #[serde(borrow, default)]
    user: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Cow<'a, str>,
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    /// A redacted event: the message was deleted.
    #[serde(default)]
    deleted: bool,
    #[serde(borrow, default)]
    attachments: Vec<LineAttachment<'a>>,
}

/// A file a message carries, as a line shows it.
#[derive(Deserialize)]
struct LineAttachment<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
struct Room<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// Messages a connection remembers the seq of (for `EDIT` and `DEL` lines): the last ones it
/// showed, by id as a number (an edit of an older message is not shown).
const REMEMBERED: usize = 512;

/// A message id as remembered: the UUID's 128 bits.
fn message_key(id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.as_u128())
}

/// Renders server frames as lines. It remembers the seq of the last messages it showed (`EDIT`
/// and `DEL` name the message by it; an edit of a message this client did not see, or saw long
/// ago, is not shown) and who it last said was online in each room (`PRESENCE` lines say what
/// changed).
#[derive(Default)]
pub struct Renderer {
    current: Current,
    shown: HashMap<u128, u64>,
    shown_order: VecDeque<u128>,
    online: HashMap<String, HashSet<String>>,
}

impl Renderer {
    pub fn new(current: Current) -> Self {
        Self {
            current,
            ..Self::default()
        }
    }

    /// The lines of one server frame, each ending in `\n`, appended to `out`.
    pub fn render(&mut self, frame: &str, out: &mut String) {
        use std::fmt::Write as _;
        let Ok(frame) = serde_json::from_str::<Frame>(frame) else {
            return;
        };
        let room = &*frame.room;
        // Writing to a String cannot fail.
        let _ = match &*frame.r#type {
            "event" => match frame.event {
                Some(event) => self.event(room, frame.seq, event, out),
                None => Ok(()),
            },
            "joined" => {
                self.current.set(Some(room));
                self.online.remove(room);
                writeln!(out, "JOINED {room} {}", frame.head)
            }
            "left" => {
                self.current.clear_if(room);
                self.online.remove(room);
                writeln!(out, "OK left {room}")
            }
            "ack" => writeln!(out, "OK sent {}", frame.seq),
            "error" => writeln!(out, "ERR {} {}", frame.code, escape(&frame.message)),
            "pong" => writeln!(out, "OK pong"),
            "presence" => {
                let now: HashSet<String> = frame.online.iter().map(|u| u.to_string()).collect();
                let before = self.online.remove(room).unwrap_or_default();
                let mut came: Vec<&String> = now.difference(&before).collect();
                let mut went: Vec<&String> = before.difference(&now).collect();
                came.sort();
                went.sort();
                for user in came {
                    let _ = writeln!(out, "PRESENCE {room} {user} online");
                }
                for user in went {
                    let _ = writeln!(out, "PRESENCE {room} {user} offline");
                }
                self.online.insert(room.to_string(), now);
                Ok(())
            }
            "who" => writeln!(out, "OK who {room} {}", frame.online.join(" ")),
            "rooms" => {
                let ids: Vec<&str> = frame.rooms.iter().map(|r| &*r.id).collect();
                writeln!(out, "OK rooms {}", ids.join(" "))
            }
            _ => Ok(()),
        };
    }

    fn event(&mut self, room: &str, seq: u64, event: Event, out: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        let data = event.data;
        if data.deleted {
            return Ok(()); // redacted: deleted before this client saw it
        }
        let changed = data.message_id.as_deref().and_then(message_key);
        match &*event.r#type {
            "chat.message.posted" => {
                if let Some(key) = message_key(&event.id) {
                    self.remember(key, seq);
                }
                write!(out, "MSG {room} {seq} {} {}", data.user, escape(&data.text))?;
                // A terminal cannot show a file: its name, size and where to fetch it.
                for a in &data.attachments {
                    write!(
                        out,
                        " [file {} ({} bytes) /api/files/{}]",
                        escape(&a.name),
                        a.size,
                        a.id
                    )?;
                }
                writeln!(out)
            }
            "chat.message.edited" => match changed.and_then(|m| self.shown.get(&m)) {
                Some(shown) => {
                    writeln!(
                        out,
                        "EDIT {room} {shown} {} {}",
                        data.user,
                        escape(&data.text)
                    )
                }
                None => Ok(()),
            },
            "chat.message.deleted" => match changed.and_then(|m| self.shown.get(&m)) {
                Some(shown) => writeln!(out, "DEL {room} {shown}"),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn remember(&mut self, id: u128, seq: u64) {
        if self.shown.len() >= REMEMBERED
            && let Some(oldest) = self.shown_order.pop_front()
        {
            self.shown.remove(&oldest);
        }
        self.shown_order.push_back(id);
        self.shown.insert(id, seq);
    }
}

/// The writing half of a line connection: a [`Sink`] of server frames that writes their lines.
pub struct LineSink<W> {
    writer: W,
    renderer: Renderer,
    buffer: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> LineSink<W> {
    pub fn new(writer: W, current: Current) -> Self {
        Self {
            writer,
            renderer: Renderer::new(current),
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Queues one line as it is (it is written at the next flush).
    fn push_line(&mut self, line: &str) {
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
    }

    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n =
                ready!(Pin::new(&mut self.writer).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Message> for LineSink<W> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.buffer.len() < WRITE_BUFFER {
            return Poll::Ready(Ok(()));
        }
        this.poll_write_all(cx).map_err(Error::new)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        let this = self.get_mut();
        match message {
            Message::Text(frame) => {
                let mut lines = String::new();
                this.renderer.render(frame.as_str(), &mut lines);
                this.buffer.extend_from_slice(lines.as_bytes());
            }
            Message::Close(Some(close)) => {
                let line = format!("ERR unavailable {}", close.reason.as_str());
                this.push_line(&line);
            }
            Message::Close(None) | Message::Ping(_) | Message::Pong(_) | Message::Binary(_) => {}
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_all(cx)).map_err(Error::new)?;
        Pin::new(&mut this.writer)
            .poll_flush(cx)
            .map_err(Error::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_all(cx)).map_err(Error::new)?;
        Pin::new(&mut this.writer)
            .poll_shutdown(cx)
            .map_err(Error::new)
    }
}

/// A logged-in client's lines as the connection's input.
fn incoming(read: io::Result<Read>, current: &Current) -> Result<Incoming, Error> {
    let line = match read.map_err(Error::new)? {
        Read::Line(line) => line,
        Read::TooLong => {
            let e = format!("line longer than {MAX_LINE} bytes: skipped");
            return Ok(Incoming::Bad(ApiError::bad_request(e)));
        }
        Read::NotUtf8 => {
            return Ok(Incoming::Bad(ApiError::bad_request(
                "line is not UTF-8: skipped",
            )));
        }
    };
    Ok(match parse(&line) {
        Line::Frame(frame) => Incoming::Frame(frame),
        Line::Say(text) => match current.get() {
            Some(room) => Incoming::Frame(ClientFrame::Send {
                room,
                text,
                id: None,
                reply_to: None,
                attachments: Vec::new(),
            }),
            None => Incoming::Bad(ApiError::bad_request(
                "join a room first (JOIN <room>), or MSG <room> <text>",
            )),
        },
        Line::Login { .. } => Incoming::Bad(ApiError::bad_request("logged in already")),
        Line::Quit => Incoming::Close,
        Line::Nothing => Incoming::Heard,
        Line::Bad(e) => Incoming::Bad(e),
    })
}

/// Accepts line clients on `listener` until `shutdown` resolves. Their connections end when
/// the edge's do (the HTTP server's shutdown kicks every connection with 1001).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "line protocol listening");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = crate::accept(&listener) => accepted,
            () = &mut shutdown => return Ok(()),
        };
        tokio::spawn(connection(state.clone(), tcp, peer));
    }
}

/// One line client: `LOGIN`, then the connection.
async fn connection(state: AppState, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
    let (read, write) = tcp.into_split();
    let current = Current::default();
    let mut lines = Lines::new(read);
    let mut sink = LineSink::new(write, current.clone());
    let client = ClientAddr(Some(peer.ip()));
    let logged_in =
        tokio::time::timeout(LOGIN_PATIENCE, login(&state, client, &mut lines, &mut sink)).await;
    let user = match logged_in {
        Ok(Some(user)) => user,
        Ok(None) => return,
        Err(_) => {
            sink.push_line("ERR unauthorized no LOGIN in time");
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            return;
        }
    };
    let seat = match crate::ws::reserve_seats(&state, &user, client) {
        Ok(seat) => seat,
        Err(e) => {
            sink.push_line(&format!("ERR {} {}", e.code.as_str(), e.message));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            return;
        }
    };
    if *state.shutdown.borrow() {
        return;
    }
    let stream = lines.map(move |read| incoming(read, &current));
    crate::ws::connection::serve(state, user, seat, (sink, stream), Peer::Line).await;
}

/// Reads lines until a `LOGIN` succeeds (answering every other line with an error), `QUIT`, or
/// the end of the input.
async fn login<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    state: &AppState,
    client: ClientAddr,
    lines: &mut Lines<R>,
    sink: &mut LineSink<W>,
) -> Option<UserId> {
    sink.push_line("OK chatlog: LOGIN <user> [<password>]");
    sink.flush().await.ok()?;
    while let Some(read) = lines.next().await {
        let answer = match read.ok()? {
            Read::Line(line) => match parse(&line) {
                Line::Login { user, password } => {
                    match log_in(state, client, &user, password).await {
                        Ok((user, line)) => {
                            sink.push_line(&line);
                            sink.flush().await.ok()?;
                            return Some(user);
                        }
                        Err(e) => e,
                    }
                }
                Line::Quit => return None,
                Line::Nothing => continue,
                Line::Bad(e) => e,
                Line::Frame(_) | Line::Say(_) => ApiError::new(
                    Code::Unauthorized,
                    "log in first: LOGIN <user> [<password>]",
                ),
            },
            Read::TooLong => ApiError::bad_request(format!("line longer than {MAX_LINE} bytes")),
            Read::NotUtf8 => ApiError::bad_request("line is not UTF-8"),
        };
        sink.push_line(&format!(
            "ERR {} {}",
            answer.code.as_str(),
            escape(&answer.message)
        ));
        sink.flush().await.ok()?;
    }
    None
}

/// `LOGIN user [password]`: an account's password, or a guest's secret (none: claim the name,
/// and the answer carries the new secret). Counted like the HTTP logins of the address.
async fn log_in(
    state: &AppState,
    client: ClientAddr,
    user: &str,
    password: Option<String>,
) -> Result<(UserId, String), ApiError> {
    client.take_auth(state)?;
    let user = UserId::parse(user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Holder::Account { .. } = state.accounts.holder(&state.log, &user).await? {
        let password =
            password.ok_or_else(|| ApiError::new(Code::Unauthorized, "wrong name or password"))?;
        crate::accounts::login(state, &user, password).await?;
        let line = format!("OK login {user}");
        return Ok((user, line));
    }
    if !state.config.allow_guests {
        return Err(ApiError::new(
            Code::Forbidden,
            "guest login is switched off",
        ));
    }
    let claimed = password.is_none();
    let (_, secret) = crate::accounts::guest(state, &user, password).await?;
    let line = if claimed {
        format!("OK guest {user} {secret}")
    } else {
        format!("OK login {user}")
    };
    Ok((user, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(line: &str) -> ClientFrame {
        match parse(line) {
            Line::Frame(frame) => frame,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn bad(line: &str) -> String {
        match parse(line) {
            Line::Bad(e) => {
                assert_eq!(e.code, Code::BadRequest, "{line}");
                e.message
            }
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn every_command_parses_into_its_frame() {
        assert_eq!(
            parse("LOGIN ada"),
            Line::Login {
                user: "ada".into(),
                password: None
            }
        );
        assert_eq!(
            parse("LOGIN ada s3cret\r"),
            Line::Login {
                user: "ada".into(),
                password: Some("s3cret".into())
            }
        );
        assert_eq!(
            frame_of("JOIN lobby"),
            ClientFrame::Join {
                room: "lobby".into(),
                since: None,
                last: Some(JOIN_BACKLOG),
                id: None
            }
        );
        assert_eq!(
            frame_of("JOIN lobby 41"),
            ClientFrame::Join {
                room: "lobby".into(),
                since: Some(41),
                last: None,
                id: None
            }
        );
        assert_eq!(
            frame_of("MSG lobby hello  there "),
            ClientFrame::Send {
                room: "lobby".into(),
                text: "hello  there ".into(),
                id: None,
                reply_to: None,
                attachments: Vec::new(),
            }
        );
        assert_eq!(
            frame_of("LEAVE lobby"),
            ClientFrame::Leave {
                room: "lobby".into(),
                id: None
            }
        );
        assert_eq!(frame_of("ROOMS"), ClientFrame::Rooms { id: None });
        assert_eq!(
            frame_of("/who lobby"),
            ClientFrame::Who {
                room: "lobby".into(),
                id: None
            }
        );
        assert_eq!(parse("QUIT"), Line::Quit);
        assert_eq!(parse("/quit"), Line::Quit);
        assert_eq!(parse("   "), Line::Nothing);
    }

    #[test]
    fn any_other_line_is_text_for_the_room() {
        for text in ["hello", "OK thanks", "join me later", "JOINED the club"] {
            assert_eq!(parse(text), Line::Say(text.into()));
        }
    }

    #[test]
    fn bad_commands_say_how_to_use_them() {
        assert!(bad("JOIN").contains("JOIN <room>"));
        assert!(bad("JOIN lobby soon").contains("since a number"));
        assert!(bad("MSG lobby").contains("MSG <room> <text>"));
        assert!(bad("LOGIN a b c").contains("LOGIN"));
        assert!(bad("/frobnicate now").contains("unknown command FROBNICATE"));
    }

    fn rendered(renderer: &mut Renderer, frames: &[&str]) -> String {
        let mut out = String::new();
        for frame in frames {
            renderer.render(frame, &mut out);
        }
        out
    }

    /// The id of the event stored at `seq` in these tests.
    fn uuid_of(seq: u64) -> String {
        format!("00000000-0000-7000-8000-{seq:012}")
    }

    fn event(room: &str, seq: u64, kind: &str, data: &str) -> String {
        format!(
            r#"{{"type":"event","room":"{room}","seq":{seq},"event":{{"specversion":"1.0","id":"{}","source":"/chatlog/edge","type":"{kind}","subject":"{room}","data":{data}}}}}"#,
            uuid_of(seq)
        )
    }

    #[test]
    fn room_events_render_as_lines_naming_the_message_by_its_seq() {
        let current = Current::default();
        let mut r = Renderer::new(current.clone());
        let out = rendered(
            &mut r,
            &[
                r#"{"type":"joined","room":"lobby","head":4}"#,
                &event(
                    "lobby",
                    5,
                    "chat.message.posted",
                    r#"{"user":"ada","text":"hi\nthere","mentions":[]}"#,
                ),
                &event(
                    "lobby",
                    6,
                    "chat.message.edited",
                    &format!(
                        r#"{{"user":"ada","message_id":"{}","text":"hello"}}"#,
                        uuid_of(5)
                    ),
                ),
                &event(
                    "lobby",
                    7,
                    "chat.reaction.added",
                    &format!(
                        r#"{{"user":"bob","message_id":"{}","emoji":"x"}}"#,
                        uuid_of(5)
                    ),
                ),
                &event(
                    "lobby",
                    8,
                    "chat.message.deleted",
                    &format!(r#"{{"user":"ada","message_id":"{}"}}"#, uuid_of(5)),
                ),
                // An edit of a message this client never saw, and a redacted post: not shown.
                &event(
                    "lobby",
                    9,
                    "chat.message.edited",
                    &format!(
                        r#"{{"user":"ada","message_id":"{}","text":"x"}}"#,
                        uuid_of(1)
                    ),
                ),
                &event("lobby", 10, "chat.message.posted", r#"{"deleted":true}"#),
                &event(
                    "lobby",
                    11,
                    "chat.message.posted",
                    r#"{"user":"bob","text":"","attachments":[{"id":"lobby.ab","name":"a\nb.pdf","size":12,"content_type":"application/pdf"}]}"#,
                ),
                r#"{"type":"ack","id":"x","seq":11}"#,
                r#"{"type":"error","code":"rate_limited","message":"slow\ndown"}"#,
            ],
        );
        assert_eq!(
            out,
            "JOINED lobby 4\nMSG lobby 5 ada hi\\nthere\nEDIT lobby 5 ada hello\nDEL lobby 5\n\
             MSG lobby 11 bob  [file a\\nb.pdf (12 bytes) /api/files/lobby.ab]\n\
             OK sent 11\nERR rate_limited slow\\ndown\n"
        );
        assert_eq!(current.get().as_deref(), Some("lobby"));
        rendered(&mut r, &[r#"{"type":"left","room":"lobby"}"#]);
        assert_eq!(current.get(), None);
    }

    #[test]
    fn a_connection_remembers_the_last_messages_it_showed_only() {
        let mut r = Renderer::default();
        let posts: Vec<String> = (1..=REMEMBERED as u64 + 1)
            .map(|seq| {
                event(
                    "a",
                    seq,
                    "chat.message.posted",
                    r#"{"user":"ada","text":"t"}"#,
                )
            })
            .collect();
        let posts: Vec<&str> = posts.iter().map(String::as_str).collect();
        rendered(&mut r, &posts);
        assert_eq!(r.shown.len(), REMEMBERED);
        let edit = |of: u64| {
            let data = format!(
                r#"{{"user":"ada","message_id":"{}","text":"e"}}"#,
                uuid_of(of)
            );
            event("a", 9_999, "chat.message.edited", &data)
        };
        assert_eq!(rendered(&mut r, &[&edit(1)]), "", "forgotten");
        let last = REMEMBERED as u64 + 1;
        assert_eq!(
            rendered(&mut r, &[&edit(last)]),
            format!("EDIT a {last} ada e\n")
        );
    }

    #[test]
    fn presence_renders_what_changed() {
        let mut r = Renderer::default();
        let out = rendered(
            &mut r,
            &[
                r#"{"type":"presence","room":"a","online":["bob","ada"],"typing":[]}"#,
                r#"{"type":"presence","room":"a","online":["ada"],"typing":["ada"]}"#,
                r#"{"type":"presence","room":"a","online":["ada","cy"],"typing":[]}"#,
                r#"{"type":"who","room":"a","online":["ada","cy"],"typing":[]}"#,
                r#"{"type":"rooms","rooms":[{"id":"a","name":"A"},{"id":"b","name":"B"}]}"#,
                r#"{"type":"notification","event":{}}"#,
            ],
        );
        assert_eq!(
            out,
            "PRESENCE a ada online\nPRESENCE a bob online\nPRESENCE a bob offline\n\
             PRESENCE a cy online\nOK who a ada cy\nOK rooms a b\n"
        );
    }

    #[tokio::test]
    async fn lines_are_split_bounded_and_checked() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\n{long}\nbad \u{e9}\n\ntwo\nlast-without-newline");
        let mut bytes = input.into_bytes();
        let e_acute = bytes.iter().position(|b| *b == 0xc3).unwrap();
        bytes[e_acute] = 0xff; // no longer UTF-8
        let mut lines = Lines::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(read) = lines.next().await {
            got.push(read.unwrap());
        }
        assert_eq!(
            got,
            [
                Read::Line("one\r".into()),
                Read::TooLong,
                Read::NotUtf8,
                Read::Line(String::new()),
                Read::Line("two".into()),
            ]
        );
    }
}
