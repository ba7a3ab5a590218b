//! One event to one function: the HTTP call (a binary-mode CloudEvent, signed), its retries, the
//! dead letter after the last, and the answer's events appended.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use chatlog_events::{
    ChatEvent, Encoded, EventId, Payload, RoomId, Stream, UserId,
    functions::{FunctionName, FunctionSpec, HOPS, SIGNATURE_HEADER, dead_headers, dead_subject},
    subjects::{self, headers},
};
use cloudevents::{AttributesReader, Event, event::ExtensionValue};
use tokio::sync::{Semaphore, watch};

use crate::{
    Config,
    answer::{self, Answered},
    signature,
    stats::FunctionStats,
};

/// A stored event, read for delivery.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: EventId,
    pub ty: String,
    pub source: String,
    /// Its room, for a room's event.
    pub room: Option<RoomId>,
    pub hops: u32,
    /// Who it names as holding their names: its author and the users it mentions. An answer may
    /// mention these (the runtime cannot ask who else holds a name).
    pub people: Vec<UserId>,
    event: Event,
}

/// Reads a stored body (an error: not an event a function can be given).
pub fn prepare(stream: Stream, body: &[u8]) -> Result<Prepared, String> {
    let event: Event =
        serde_json::from_slice(body).map_err(|e| format!("not a CloudEvent: {e}"))?;
    let id = EventId::parse(event.id()).map_err(|_| "its id is not a UUID".to_string())?;
    let hops = match event.extension(HOPS) {
        Some(ExtensionValue::Integer(i)) => u32::try_from(*i).unwrap_or(u32::MAX),
        Some(ExtensionValue::String(s)) => s.parse().unwrap_or(u32::MAX),
        Some(ExtensionValue::Boolean(_)) => u32::MAX,
        None => 0,
    };
    let room = match stream {
        Stream::Rooms => event.subject().and_then(|s| RoomId::parse(s).ok()),
        _ => None,
    };
    let people = people_of(&event);
    Ok(Prepared {
        id,
        ty: event.ty().to_string(),
        source: event.source().to_string(),
        room,
        hops,
        people,
        event,
    })
}

/// The event's `data.user` and `data.mentions` (none when they are not user ids, which no stored
/// event has: the edge validates both).
fn people_of(event: &Event) -> Vec<UserId> {
    #[derive(serde::Deserialize)]
    struct People {
        #[serde(default)]
        user: Option<UserId>,
        #[serde(default)]
        mentions: Vec<UserId>,
    }
    let Ok(people) = crate::answer::data::<People>(event) else {
        return Vec::new();
    };
    let mut all: Vec<UserId> = people.user.into_iter().chain(people.mentions).collect();
    all.dedup();
    all
}

/// The delivery of `prepared` to `spec`'s URL: the event in binary mode (cloudevents-sdk's HTTP
/// binding), its data as the body, signed with the function's secret.
pub fn request(prepared: &Prepared, spec: &FunctionSpec) -> Result<reqwest::Request, String> {
    let built: http::Request<Option<Vec<u8>>> =
        http::Request::try_from(prepared.event.clone()).map_err(|e| e.to_string())?;
    let (mut parts, body) = built.into_parts();
    let body = body.unwrap_or_default();
    parts.method = http::Method::POST;
    parts.uri = spec
        .url
        .parse()
        .map_err(|e| format!("bad url {:?}: {e}", spec.url))?;
    let signed = signature::sign(spec.secret.as_bytes(), &body);
    parts.headers.insert(
        SIGNATURE_HEADER,
        http::HeaderValue::from_str(&signed).map_err(|e| e.to_string())?,
    );
    reqwest::Request::try_from(http::Request::from_parts(parts, body)).map_err(|e| e.to_string())
}

/// What a call came to.
#[derive(Debug)]
pub enum Called {
    /// A 2xx, with at most `cap` bytes of its body (`truncated` when there was more).
    Answered {
        headers: http::HeaderMap,
        body: Vec<u8>,
        truncated: bool,
    },
    /// Any other status, an error or the timeout.
    Failed(String),
}

/// Calls, reading at most `cap` bytes of the answer, all within `timeout`.
pub async fn call(
    client: &reqwest::Client,
    request: reqwest::Request,
    timeout: Duration,
    cap: usize,
) -> Called {
    let run = async {
        let mut response = client.execute(request).await.map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let headers = response.headers().clone();
        if response.content_length().is_some_and(|n| n > cap as u64) {
            return Ok(Called::Answered {
                headers,
                body: Vec::new(),
                truncated: true,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > cap {
                return Ok(Called::Answered {
                    headers,
                    body,
                    truncated: true,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Called::Answered {
            headers,
            body,
            truncated: false,
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(called)) => called,
        Ok(Err(why)) => Called::Failed(why),
        Err(_) => Called::Failed(format!("no answer within {timeout:?}")),
    }
}

/// An error with its causes: reqwest's own message rarely says what went wrong.
fn describe(e: reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The pause before try `failed + 1`: doubling from `config.backoff` up to `config.max_backoff`,
/// half of it random so that the retries of many events do not come together.
pub fn backoff(config: &Config, failed: u32) -> Duration {
    let doubled = config
        .backoff
        .saturating_mul(1u32 << failed.saturating_sub(1).min(20));
    let full = doubled.min(config.max_backoff);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

/// What a worker needs to deliver.
pub(crate) struct Shared {
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    pub config: Config,
    pub rooms: Rooms,
}

/// One function's delivery context.
pub(crate) struct Target {
    pub name: FunctionName,
    pub spec: watch::Receiver<Arc<FunctionSpec>>,
    pub stats: Arc<FunctionStats>,
    pub calls: Arc<Semaphore>,
    pub stream: Stream,
}

/// Delivers the event stored at `seq` until the function takes it or it is dead-lettered, and
/// stores the function's answer. Returns once the event may be acknowledged; waits on NATS as
/// long as it takes (the worker aborts it when stopping, and the event is delivered again).
pub(crate) async fn deliver(
    shared: &Shared,
    target: &Target,
    seq: u64,
    subject: &str,
    body: Bytes,
) {
    if let Err((why, tries)) = try_deliver(shared, target, seq, &body).await {
        dead_letter(shared, target, seq, subject, body, &why, tries).await;
    }
}

/// Calls until the function takes the event (or it is not one to give it), then stores its
/// answer; else why not, after how many calls.
pub(crate) async fn try_deliver(
    shared: &Shared,
    target: &Target,
    seq: u64,
    body: &[u8],
) -> Result<(), (String, u32)> {
    let config = &shared.config;
    let prepared = prepare(target.stream, body).map_err(|why| (why, 0))?;
    let own = format!("/chatlog/{}", target.name.component());
    if !target.spec.borrow().wants(&prepared.ty) || prepared.source == own {
        target.stats.skipped.fetch_add(1, Relaxed);
        return Ok(());
    }
    let mut tries = 0;
    loop {
        tries += 1;
        // The spec as of this try: a new URL or secret applies to the next call.
        let spec = target.spec.borrow().clone();
        let request = request(&prepared, &spec).map_err(|why| (why, tries - 1))?;
        let called = {
            let _permit = target.calls.acquire().await;
            let started = Instant::now();
            let called = call(
                &shared.http,
                request,
                config.timeout,
                config.max_answer_bytes,
            )
            .await;
            target.stats.latency.record(started.elapsed());
            called
        };
        match called {
            Called::Answered {
                headers,
                body,
                truncated,
            } => {
                target.stats.delivered.fetch_add(1, Relaxed);
                let answered = Answered {
                    function: &target.name,
                    spec: &spec,
                    id: prepared.id,
                    room: prepared.room.clone(),
                    hops: prepared.hops,
                    people: &prepared.people,
                };
                let parsed = answer::parse(
                    &answered,
                    &headers,
                    body,
                    config.max_answer_bytes,
                    truncated,
                );
                store(shared, target, seq, parsed).await;
                return Ok(());
            }
            Called::Failed(why) => {
                tracing::debug!(function = %target.name, seq, tries, why, "call failed");
                target.stats.fail(why.clone());
                if tries >= config.tries {
                    return Err((why, tries));
                }
                tokio::time::sleep(backoff(config, tries)).await;
            }
        }
    }
}

/// Appends an answer's events (all of them, or none when one goes to a room that does not take
/// it), counting what was rejected.
async fn store(
    shared: &Shared,
    target: &Target,
    seq: u64,
    parsed: Result<Vec<answer::Answer>, answer::Rejection>,
) {
    let reject = |r: answer::Rejection| {
        tracing::info!(function = %target.name, seq, rejection = %r, "answer rejected");
        target.stats.reject(r.kind(), r.to_string());
    };
    let answers = match parsed {
        Ok(a) => a,
        Err(r) => return reject(r),
    };
    for a in &answers {
        if !shared.rooms.public(&shared.js, &a.room).await {
            return reject(answer::Rejection::NoSuchRoom(a.room.clone()));
        }
    }
    for a in answers {
        let encoded = match a.encode() {
            Ok(e) => e,
            Err(why) => return reject(answer::Rejection::BadData(why)),
        };
        match append(&shared.js, encoded).await {
            Ok(_) => {
                target.stats.answers.fetch_add(1, Relaxed);
            }
            Err(why) => return reject(answer::Rejection::BadData(format!("not stored: {why}"))),
        }
    }
}

/// Appends until JetStream acknowledges (the same `Nats-Msg-Id` each time: stored once), or
/// refuses for good.
pub(crate) async fn append(js: &jetstream::Context, encoded: Encoded) -> Result<u64, String> {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    use chatlog_events::nats;
    let mut pause = nats::FIRST_PAUSE;
    loop {
        match nats::append_once(js, &encoded).await {
            Ok(ack) => return Ok(ack.sequence),
            Err(e)
                if matches!(
                    e.kind(),
                    Kind::TimedOut | Kind::BrokenPipe | Kind::MaxAckPending
                ) =>
            {
                tracing::debug!(error = %e, subject = encoded.subject, "append failed, retrying");
                tokio::time::sleep(pause).await;
                pause = nats::next_pause(pause);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Keeps the event in `CHAT_DEAD` (`chat.dead.<function>`) with why, stored once per function
/// and event however often this runs.
async fn dead_letter(
    shared: &Shared,
    target: &Target,
    seq: u64,
    subject: &str,
    body: Bytes,
    why: &str,
    tries: u32,
) {
    tracing::warn!(function = %target.name, seq, tries, why, "event dead-lettered");
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::CLOUDEVENTS_JSON);
    h.insert(
        headers::MSG_ID,
        format!("{}/{}/{seq}", target.name, target.stream.name()).as_str(),
    );
    // A header value is one line.
    let why: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect();
    h.insert(dead_headers::REASON, why.as_str());
    h.insert(dead_headers::TRIES, tries.to_string().as_str());
    h.insert(dead_headers::STREAM, target.stream.name());
    h.insert(dead_headers::SEQ, seq.to_string().as_str());
    h.insert(dead_headers::SUBJECT, subject);
    let encoded = Encoded {
        subject: dead_subject(&target.name),
        headers: h,
        body,
    };
    match append(&shared.js, encoded).await {
        Ok(_) => {
            target.stats.dead.fetch_add(1, Relaxed);
        }
        Err(e) => {
            tracing::error!(function = %target.name, seq, error = %e, "dead letter not stored")
        }
    }
}

/// Which rooms exist and are public, from each room's first event (which says so for ever).
#[derive(Default)]
pub(crate) struct Rooms(Mutex<HashMap<RoomId, bool>>);

const ROOMS_KEPT: usize = 10_000;

impl Rooms {
    /// Whether `room` was created public; NATS is asked until it answers.
    pub async fn public(&self, js: &jetstream::Context, room: &RoomId) -> bool {
        if let Some(&known) = self.lock().get(room) {
            return known;
        }
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let mut pause = Duration::from_millis(50);
        loop {
            let first = match js.get_stream_no_info(Stream::Rooms.name()).await {
                Ok(stream) => {
                    stream
                        .direct_get_first_for_subject(subjects::room(room))
                        .await
                }
                Err(e) => Err(async_nats::jetstream::stream::DirectGetError::with_source(
                    DirectGetErrorKind::Other,
                    e,
                )),
            };
            match first {
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return false,
                Ok(message) => {
                    let public = matches!(
                        ChatEvent::decode(&message.payload).map(|e| e.payload),
                        Ok(Payload::RoomCreated(c)) if !c.private
                    );
                    let mut known = self.lock();
                    if known.len() >= ROOMS_KEPT {
                        known.clear();
                    }
                    known.insert(room.clone(), public);
                    return public;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading a room's first event failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use chatlog_events::{
        UserId,
        event::MessagePosted,
        functions::{SIGNATURE_HEADER, Source},
    };

    use super::*;

    fn stored(hops: Option<&str>) -> Vec<u8> {
        let ev = ChatEvent::in_room(
            &RoomId::parse("lobby").unwrap(),
            UserId::parse("ada").unwrap(),
            "edge",
            Payload::MessagePosted(MessagePosted {
                text: "hi".into(),
                mentions: vec![],
                reply_to: None,
                attachments: Vec::new(),
            }),
        );
        let mut body = ev.encode().unwrap().body.to_vec();
        if let Some(h) = hops {
            body.pop();
            body.extend_from_slice(format!(r#","chatloghops":{h}}}"#).as_bytes());
        }
        body
    }

    #[test]
    fn a_delivery_is_a_signed_binary_mode_cloudevent_of_the_data() {
        let spec = FunctionSpec {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "0123456789abcdef".into(),
            stream: Source::Rooms,
            subject: "chat.room.>".into(),
            types: vec![],
            moderates: vec![],
        };
        let body = stored(None);
        let p = prepare(Stream::Rooms, &body).unwrap();
        assert_eq!(
            (p.hops, p.room.as_ref().map(|r| r.as_str())),
            (0, Some("lobby"))
        );
        let r = request(&p, &spec).unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.url().as_str(), "http://127.0.0.1:9/hook");
        let h = r.headers();
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-type"], "chat.message.posted");
        assert_eq!(h["ce-source"], "/chatlog/edge");
        assert_eq!(h["ce-subject"], "lobby");
        assert_eq!(h["ce-id"], p.id.to_string().as_str());
        assert!(h.contains_key("ce-time"));
        assert_eq!(h["content-type"], "application/json");
        let sent = r.body().unwrap().as_bytes().unwrap();
        let data: serde_json::Value = serde_json::from_slice(sent).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"text":"hi","mentions":[],"user":"ada"})
        );
        let sig = h[SIGNATURE_HEADER].to_str().unwrap();
        assert!(signature::verify(b"0123456789abcdef", sent, sig));
    }

    #[test]
    fn the_hop_count_is_read_and_sent_on() {
        let p = prepare(Stream::Rooms, &stored(Some("3"))).unwrap();
        assert_eq!(p.hops, 3);
        assert_eq!(
            prepare(Stream::Rooms, &stored(Some("\"2\""))).unwrap().hops,
            2
        );
        assert_eq!(
            prepare(Stream::Rooms, &stored(Some("-1"))).unwrap().hops,
            u32::MAX
        );
        let spec = FunctionSpec {
            url: "http://127.0.0.1:9/".into(),
            secret: "0123456789abcdef".into(),
            stream: Source::Rooms,
            subject: "chat.room.>".into(),
            types: vec![],
            moderates: vec![],
        };
        assert_eq!(request(&p, &spec).unwrap().headers()["ce-chatloghops"], "3");
        assert!(prepare(Stream::Rooms, b"garbage").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_bound() {
        let config = Config {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..Config::default()
        };
        for _ in 0..100 {
            let first = backoff(&config, 1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = backoff(&config, 3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            let late = backoff(&config, 40);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&late));
        }
    }
}
