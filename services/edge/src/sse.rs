//! Server-sent events and long polling (docs/protocol.md §8), for clients without WebSocket.
//!
//! `GET /api/rooms/{room}/stream` is the WebSocket's connection again, joined to one room with
//! `since` (from `Last-Event-ID` or `?since=`), writing each room event as an SSE event whose
//! `id` is its seq: an `EventSource` that reconnects resumes exactly after the last one it saw.
//! `?wait=` on `/events` parks the request on the room's feed ([`wait_for_event`]) rather than
//! asking JetStream again and again.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Error,
    body::Body,
    extract::{
        State,
        ws::{Message, Utf8Bytes},
    },
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use chatlog_events::{RoomId, UserId};
use futures::{Sink, StreamExt, channel::mpsc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    AppState,
    address::ClientAddr,
    auth::StreamUser,
    error::ApiError,
    frames::ClientFrame,
    http::{ApiPath, ApiQuery, parse_room},
    hub::{Kick, Kind, Subscriber},
    inbox,
    ws::connection::{Incoming, Peer},
};

/// The longest a long poll waits (`?wait=`, seconds).
pub const MAX_WAIT_SECS: u64 = 30;

/// Chunks of the stream's body a slow reader may leave unread before its writes wait.
const BODY_QUEUE: usize = 64;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Resume after this seq (the last seen) when there is no `Last-Event-ID`; without either,
    /// the stream starts at the room's head.
    #[serde(default)]
    #[param(value_type = Option<u64>, maximum = 18446744073709551615_u64)]
    since: Option<String>,
}

/// The seq to resume after: `Last-Event-ID` (what an `EventSource` sends when it reconnects),
/// else `?since=`, else none (live from now). Both are checked when both are given: a bad
/// `since` is refused even beside a good `Last-Event-ID`; an empty one is no number either (an
/// `EventSource` sends no `Last-Event-ID` rather than an empty one).
fn resume_after(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<u64>, ApiError> {
    let seq = |name: &str, value: &str| {
        value.trim().parse().map_err(|_| {
            ApiError::bad_request(format!("{name} must be a room event's seq (a number)"))
        })
    };
    let since = query
        .since
        .as_deref()
        .map(|s| seq("since", s))
        .transpose()?;
    match headers.get("last-event-id") {
        Some(id) => seq("Last-Event-ID", id.to_str().unwrap_or("?")).map(Some),
        None => Ok(since),
    }
}

/// `GET /api/rooms/{room}/stream`: the room's events as server-sent events.
#[utoipa::path(get, path = "/api/rooms/{room}/stream", summary = "Follow a room's events (server-sent events)",
    description = "Every room event from `Last-Event-ID` (or `since`, or the head) on, in order, no gap, no duplicate, on any edge. Counts as one of the user's connections; records no membership or presence.", tag = "messages",
    params(
        ("room" = RoomId, Path),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, maximum = 18446744073709551615_u64,
            description = "Resume after this seq (what an `EventSource` sends when it reconnects)."),
        StreamQuery,
    ),
    security(("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "Every room event from then on, for ever: `id: <seq>`, `event: <the CloudEvent's type>`, \
            `data: <the CloudEvent>`; a `: keep-alive` comment every 15 s; `event: left` and the end when the caller is removed \
            from the room; `event: close` when the edge stops.", content_type = "text/event-stream",
            body = crate::openapi::SseEvent),
        (status = 400, description = "A bad room id, `since` or `Last-Event-ID`.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 429, description = "The user (or address) holds its most connections on this edge.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    StreamUser(user): StreamUser,
    client: ClientAddr,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let since = resume_after(&headers, &query)?;
    // Refused here with its status; the join checks again, at the room's head.
    state.rooms.visible(&room, &user, &state.views).await?;
    let seat = crate::ws::reserve_seats(&state, &user, client)?;
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let join = ClientFrame::Join {
        room: room.to_string(),
        since,
        last: None,
        id: None,
    };
    // The client says nothing more: the join, then silence (never the end, which is a close).
    let asks = futures::stream::once(async move { Ok(Incoming::Frame(join)) })
        .chain(futures::stream::pending());
    let sink = EventSink {
        body: tx,
        done: false,
    };
    tokio::spawn(crate::ws::connection::serve(
        state,
        user,
        seat,
        (sink, Box::pin(asks)),
        Peer::EventStream,
    ));
    let body = Body::from_stream(rx.map(Ok::<_, std::convert::Infallible>));
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // nginx would otherwise hold the events back in its buffer.
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    Ok((headers, body).into_response())
}

/// The stream's writing half: each server frame the connection writes, as SSE text.
struct EventSink {
    body: mpsc::Sender<Bytes>,
    /// The stream ended (the user left the room, or the edge closed it): nothing more.
    done: bool,
}

impl Sink<Message> for EventSink {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.done {
            return Poll::Ready(Err(Error::new("the event stream ended")));
        }
        self.body
            .poll_ready(cx)
            .map_err(|_| Error::new("the client went away"))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        let (text, last) = match message {
            Message::Text(frame) => render(&frame),
            Message::Ping(_) => (Some(": keep-alive\n\n".to_string()), false),
            Message::Close(close) => {
                let reason = close.map(|c| c.reason.to_string()).unwrap_or_default();
                let data = serde_json::json!({ "reason": reason });
                (Some(format!("event: close\ndata: {data}\n\n")), true)
            }
            Message::Pong(_) | Message::Binary(_) => (None, false),
        };
        self.done |= last;
        match text {
            Some(text) => self
                .body
                .start_send(Bytes::from(text))
                .map_err(|_| Error::new("the client went away")),
            None => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.body.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// A server frame as SSE text, and whether the stream ends after it. Room events become
/// `id: seq`, `event: <type>`, `data: <the CloudEvent>`; a removal from the room ends the
/// stream; an error is passed on; what a reader has no use for (presence, acks) is dropped.
fn render(frame: &Utf8Bytes) -> (Option<String>, bool) {
    #[derive(Deserialize)]
    struct Frame<'a> {
        r#type: &'a str,
        #[serde(default)]
        seq: u64,
        #[serde(borrow, default)]
        event: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Typed<'a> {
        r#type: &'a str,
    }
    let Ok(parsed) = serde_json::from_str::<Frame>(frame.as_str()) else {
        return (None, false);
    };
    match (parsed.r#type, parsed.event) {
        ("event", Some(event)) => {
            let kind = serde_json::from_str::<Typed>(event.get()).map_or("message", |t| t.r#type);
            let text = format!(
                "id: {}\nevent: {kind}\ndata: {}\n\n",
                parsed.seq,
                event.get()
            );
            (Some(text), false)
        }
        ("left", _) => (Some(format!("event: left\ndata: {frame}\n\n")), true),
        ("error", _) => (Some(format!("event: error\ndata: {frame}\n\n")), false),
        _ => (None, false),
    }
}

/// Waits up to `within` for a room event after `after`, on the room's feed: no question to
/// JetStream until one arrives. `true` when one did (or was already there when subscribed).
pub async fn wait_for_event(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    after: u64,
    within: Duration,
) -> Result<bool, ApiError> {
    let (tx, mut rx) = inbox::inbox(16);
    let kick = Arc::new(Kick::default());
    let join = state.hub.next_join();
    let subscriber = Subscriber {
        join,
        user: user.clone(),
        tx,
        kick: kick.clone(),
    };
    let head = state.hub.join(room, subscriber).await?;
    /// Leaves the feed however the wait ends (answered, timed out, the client gone).
    struct Leave<'a>(&'a AppState, &'a RoomId, u64);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.hub.leave(self.1, self.2);
        }
    }
    let _leave = Leave(state, room, join);
    if head > after {
        return Ok(true);
    }
    let arrived = async {
        while let Some(delivery) = rx.recv().await {
            if delivery.kind == Kind::Event && delivery.seq > after {
                return true;
            }
        }
        false
    };
    Ok(tokio::select! {
        arrived = arrived => arrived,
        // Shut down, or this waiter was too slow to take its deliveries: answer now.
        _ = kick.kicked() => false,
        () = tokio::time::sleep(within) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(last_event_id: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(id) = last_event_id {
            h.insert("last-event-id", id.parse().unwrap());
        }
        h
    }

    fn query(since: Option<&str>) -> StreamQuery {
        StreamQuery {
            since: since.map(str::to_string),
        }
    }

    #[test]
    fn it_resumes_after_last_event_id_first_then_since() {
        assert_eq!(resume_after(&headers(None), &query(None)), Ok(None));
        assert_eq!(resume_after(&headers(None), &query(Some("7"))), Ok(Some(7)));
        assert_eq!(
            resume_after(&headers(Some("9")), &query(Some("7"))),
            Ok(Some(9))
        );
        let bad = resume_after(&headers(Some("nine")), &query(None)).unwrap_err();
        assert!(bad.message.contains("Last-Event-ID"), "{bad:?}");
        let bad = resume_after(&headers(None), &query(Some("-1"))).unwrap_err();
        assert!(bad.message.contains("since"), "{bad:?}");
        // Found by schemathesis (infra/api-check.sh): a bad `since` went unchecked beside a
        // `Last-Event-ID`, and an empty `Last-Event-ID` or `since` counted as none.
        let bad = resume_after(&headers(Some("0")), &query(Some("-1"))).unwrap_err();
        assert!(bad.message.contains("since"), "{bad:?}");
        let bad = resume_after(&headers(Some("")), &query(Some("7"))).unwrap_err();
        assert!(bad.message.contains("Last-Event-ID"), "{bad:?}");
        let bad = resume_after(&headers(None), &query(Some(""))).unwrap_err();
        assert!(bad.message.contains("since"), "{bad:?}");
    }

    #[test]
    fn room_events_become_sse_events_with_their_seq_as_id() {
        let frame = Utf8Bytes::from_static(
            r#"{"type":"event","room":"lobby","seq":42,"event":{"id":"x","type":"chat.message.posted","data":{"text":"a\nb"}}}"#,
        );
        let (text, last) = render(&frame);
        assert_eq!(
            text.as_deref(),
            Some(
                "id: 42\nevent: chat.message.posted\ndata: {\"id\":\"x\",\"type\":\"chat.message.posted\",\"data\":{\"text\":\"a\\nb\"}}\n\n"
            )
        );
        assert!(!last);
        let (text, last) = render(&Utf8Bytes::from_static(r#"{"type":"left","room":"r"}"#));
        assert!(text.unwrap().starts_with("event: left\n"));
        assert!(last, "a removal ends the stream");
        for dropped in [
            r#"{"type":"presence","room":"r","online":[],"typing":[]}"#,
            r#"{"type":"joined","room":"r","head":3}"#,
            r#"{"type":"ack","id":"x","seq":1}"#,
        ] {
            assert_eq!(render(&Utf8Bytes::from_static(dropped)), (None, false));
        }
    }
}
