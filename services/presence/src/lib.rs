//! `chatlog-presence`: who is online and who is typing, per room: a pure projection of
//! `CHAT_PRESENCE`.
//!
//! A user is online in a room while one of its connections is: `chat.presence.online` or
//! `heartbeat` adds the connection (a heartbeat to every room it names), `offline` removes it.
//! A user with two tabs stays online until both are gone. Typing starts with `chat.typing.started` and ends with `stopped`.
//!
//! Time only passes in [`Presence::tick`], run by the host with the wall clock once the view has
//! caught up: a connection with no heartbeat for `offline_after` (its edge died) gets a
//! `chat.presence.offline`, a typing flag older than `typing_for` a `chat.typing.stopped`. The
//! handler appends them itself, so every edge learns; their ids derive from the event they end,
//! so two replicas (or a retry) store each once. The view stays a function of the log.
//!
//! Keys: `c/<room>/<user>/<connection>` → [`Seen`]; `t/<room>/<user>` → [`Seen`].

use std::time::Duration;

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, Stream, UserId,
    event::{Empty, Presence as PresenceData},
    queries::{PresenceAnswer, PresenceRequest, presence},
};
use chatlog_runtime::{Changes, Projection, QueryError, Read, View, answer, parse_request};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The last sign of life of a connection, or the start of a typing flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub time: DateTime<Utc>,
    /// The event that said so: what a timeout event's id derives from.
    pub event: EventId,
}

/// The presence projection, with its timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// A connection with no heartbeat for this long is offline (docs/protocol.md §3: 35 s).
    pub offline_after: Duration,
    /// Typing ends by itself after this long without a refresh (docs/protocol.md §3: 6 s).
    pub typing_for: Duration,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            offline_after: Duration::from_secs(35),
            typing_for: Duration::from_secs(6),
        }
    }
}

fn room_prefix(kind: u8, room: &RoomId) -> Vec<u8> {
    let mut key = vec![kind, b'/'];
    key.extend_from_slice(room.as_str().as_bytes());
    key.push(b'/');
    key
}

fn connection_key(room: &RoomId, user: &UserId, connection: &str) -> Vec<u8> {
    let mut key = room_prefix(b'c', room);
    key.extend_from_slice(user.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(connection.as_bytes());
    key
}

fn typing_key(room: &RoomId, user: &UserId) -> Vec<u8> {
    let mut key = room_prefix(b't', room);
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

/// Splits `c/<room>/<user>/<connection>` or `t/<room>/<user>`.
fn parse_key(key: &[u8]) -> Option<(RoomId, UserId, String)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.splitn(4, '/');
    let _kind = parts.next()?;
    let room = RoomId::parse(parts.next()?).ok()?;
    let user = UserId::parse(parts.next()?).ok()?;
    let connection = parts.next().unwrap_or_default().to_string();
    Some((room, user, connection))
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Projection for Presence {
    fn name(&self) -> &'static str {
        presence::VIEW
    }

    fn version(&self) -> u32 {
        1
    }

    fn stream(&self) -> Stream {
        Stream::Presence
    }

    fn apply(&self, view: &dyn Read, _seq: u64, event: &ChatEvent) -> Changes {
        let mut changes = Changes::none();
        let Some(room) = event.room() else {
            return changes;
        };
        let seen = Seen {
            time: event.time,
            event: event.id,
        };
        match &event.payload {
            Payload::PresenceOnline(p) | Payload::PresenceHeartbeat(p) => {
                // A heartbeat names every room of its connection; its subject's room is one.
                let others = p.rooms.iter().filter(|r| **r != room);
                for room in std::iter::once(&room).chain(others) {
                    let key = connection_key(room, &event.user, &p.connection);
                    // Events of one subject are in order, but be safe: never go back in time.
                    let newer = view
                        .get(&key)
                        .and_then(|v| serde_json::from_slice::<Seen>(&v).ok())
                        .is_none_or(|old| old.time <= event.time);
                    if newer {
                        changes.put_json(key, &seen);
                    }
                }
            }
            Payload::PresenceOffline(p) => {
                changes.delete(connection_key(&room, &event.user, &p.connection));
                // Gone means not typing either (another tab may type again).
                changes.delete(typing_key(&room, &event.user));
            }
            Payload::TypingStarted(_) => changes.put_json(typing_key(&room, &event.user), &seen),
            Payload::TypingStopped(_) => changes.delete(typing_key(&room, &event.user)),
            _ => {}
        }
        changes
    }

    fn queries(&self) -> &'static [&'static str] {
        &[presence::ROOM]
    }

    fn query(&self, view: &View, query: &str, request: &[u8]) -> Result<Vec<u8>, QueryError> {
        match query {
            presence::ROOM => {
                let req: PresenceRequest = parse_request(request)?;
                answer(&room_presence(view, &req.room)?)
            }
            other => Err(QueryError::NotFound(format!("no query {other}"))),
        }
    }

    fn tick(&self, view: &View, now: DateTime<Utc>) -> Vec<ChatEvent> {
        let mut due = Vec::new();
        let offline_before = now - to_chrono(self.offline_after);
        let typing_before = now - to_chrono(self.typing_for);
        for entry in view.tree().iter() {
            let Ok((key, value)) = entry else { break };
            let Ok(seen) = serde_json::from_slice::<Seen>(&value) else {
                continue;
            };
            let Some((room, user, connection)) = parse_key(&key) else {
                continue;
            };
            let event = match key.first() {
                Some(b'c') if seen.time < offline_before => ChatEvent::in_room(
                    &room,
                    user,
                    "presence",
                    Payload::PresenceOffline(PresenceData::of(connection)),
                )
                .with_id(EventId::derived(&seen.event, "offline: no heartbeat")),
                Some(b't') if seen.time < typing_before => {
                    ChatEvent::in_room(&room, user, "presence", Payload::TypingStopped(Empty {}))
                        .with_id(EventId::derived(&seen.event, "typing ran out"))
                }
                _ => continue,
            };
            due.push(event.with_time(now));
        }
        due
    }
}

/// Who is online and typing in `room`.
pub fn room_presence(view: &View, room: &RoomId) -> Result<PresenceAnswer, QueryError> {
    let mut online: Vec<UserId> = Vec::new();
    for entry in view.tree().scan_prefix(room_prefix(b'c', room)) {
        let (key, _) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        if let Some((_, user, _)) = parse_key(&key)
            && online.last() != Some(&user)
        {
            online.push(user);
        }
    }
    let mut typing = Vec::new();
    for entry in view.tree().scan_prefix(room_prefix(b't', room)) {
        let (key, _) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        if let Some((_, user, _)) = parse_key(&key) {
            typing.push(user);
        }
    }
    online.sort();
    online.dedup();
    Ok(PresenceAnswer { online, typing })
}

#[cfg(test)]
mod tests;
