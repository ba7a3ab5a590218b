//! `chatlog-notifications`: two pure projections.
//!
//! [`Mentions`] reads `CHAT_ROOMS`: it keeps who is a member of each room (its creator, those
//! listed for a private room, or joined; membership events applied only as
//! [`membership::allowed`] says, the rule the edge checks) and turns every mention of a member,
//! not the author, into a derived
//! `chat.notification.created` on `chat.user.<user>`, its id derived from the message id and the
//! user: a replay, a rebuild or a second replica emits the same id, stored once.
//!
//! [`Notifications`] reads `CHAT_USERS`: each user's notifications (read or not) and read
//! markers. It answers `views.notifications.list` (pages cut by count and by bytes, within
//! [`MAX_ANSWER_BYTES`]) and `.markers` (at most [`MAX_MARKERS`]).
//!
//! Keys of [`Mentions`]: `i/<event id>` (seen: membership events and messages that mention
//! someone; the others change nothing here), `m/<room>/<user>` (a member), `r/<room>` →
//! [`RoomFacts`] JSON (what the membership rule needs besides the members).
//! Keys of [`Notifications`]: `i/<event id>` (seen), `n/<user>/<seq>` → [`NotificationView`],
//! `u/<user>` → the seqs of its unread notifications, `r/<user>/<room>` → read marker.

use std::collections::BTreeMap;

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, Stream, UserId,
    event::NotificationCreated,
    membership,
    queries::{
        MAX_ANSWER_BYTES, MAX_MARKERS, MarkersAnswer, MarkersRequest, NotificationView,
        NotificationsAnswer, NotificationsRequest, json_len, notifications,
    },
};
use chatlog_runtime::{
    Changes, Projection, QueryError, Read, View, answer, get_json, parse_request,
};

use chatlog_runtime::event_key as seen_key;
use serde::{Deserialize, Serialize};

fn member_key(room: &RoomId, user: &UserId) -> Vec<u8> {
    format!("m/{room}/{user}").into_bytes()
}

fn room_key(room: &RoomId) -> Vec<u8> {
    format!("r/{room}").into_bytes()
}

/// A room as its `chat.room.created` made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomFacts {
    pub private: bool,
    pub creator: UserId,
}

/// A known room for [`membership::allowed`]: its facts, its members read from the view.
struct Known<'a> {
    room: &'a RoomId,
    facts: RoomFacts,
    view: &'a dyn Read,
}

impl membership::Room for Known<'_> {
    fn private(&self) -> bool {
        self.facts.private
    }

    fn creator(&self) -> &UserId {
        &self.facts.creator
    }

    fn is_member(&self, user: &UserId) -> bool {
        self.view.get(&member_key(self.room, user)).is_some()
    }
}

/// Mentions of members become notifications.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mentions;

impl Projection for Mentions {
    fn name(&self) -> &'static str {
        notifications::MENTIONS
    }

    fn version(&self) -> u32 {
        // 2: rooms' facts kept, membership events applied only as `membership::allowed` says.
        2
    }

    fn stream(&self) -> Stream {
        Stream::Rooms
    }

    fn apply(&self, view: &dyn Read, seq: u64, event: &ChatEvent) -> Changes {
        let mut changes = Changes::none();
        let Some(room) = event.room() else {
            return changes;
        };
        // Only events that change something here are remembered as seen: most messages mention
        // nobody, and a seen key for each was a sled read and insert per message.
        let matters = match &event.payload {
            Payload::RoomCreated(_) | Payload::MemberJoined(_) | Payload::MemberLeft(_) => true,
            Payload::MessagePosted(posted) => !posted.mentions.is_empty(),
            _ => false,
        };
        if !matters {
            return changes;
        }
        let seen = seen_key(&event.id);
        if view.get(&seen).is_some() {
            return changes;
        }
        changes.put(seen, Vec::new());
        let known = get_json::<RoomFacts>(view, &room_key(&room)).map(|facts| Known {
            room: &room,
            facts,
            view,
        });
        let allowed = membership::allowed(known.as_ref(), &event.user, &event.payload);
        match &event.payload {
            // The first creation counts, as in the history view.
            Payload::RoomCreated(created) if known.is_none() => {
                let facts = RoomFacts {
                    private: created.private,
                    creator: event.user.clone(),
                };
                changes.put_json(room_key(&room), &facts);
                // The creator of a public room is a member (for mentions); a private room's
                // members are those listed (the edge lists its creator).
                if !created.private {
                    changes.put(member_key(&room, &event.user), Vec::new());
                }
                for member in &created.members {
                    changes.put(member_key(&room, member), Vec::new());
                }
            }
            Payload::MemberJoined(m) if allowed => {
                changes.put(member_key(&room, &m.member), Vec::new())
            }
            Payload::MemberLeft(m) if allowed => changes.delete(member_key(&room, &m.member)),
            Payload::MessagePosted(posted) => {
                for mentioned in &posted.mentions {
                    if mentioned == &event.user || view.get(&member_key(&room, mentioned)).is_none()
                    {
                        continue;
                    }
                    let notification = ChatEvent::for_user(
                        mentioned,
                        event.user.clone(),
                        "notifications",
                        Payload::NotificationCreated(NotificationCreated {
                            room: room.clone(),
                            seq,
                            message_id: event.id,
                            by: event.user.clone(),
                            text: posted.text.clone(),
                            reason: "mention".into(),
                        }),
                    )
                    .with_id(EventId::derived(&event.id, mentioned.as_str()))
                    .with_time(event.time);
                    changes.emit.push(notification);
                }
            }
            _ => {}
        }
        changes
    }

    fn queries(&self) -> &'static [&'static str] {
        &[]
    }

    fn query(&self, _: &View, query: &str, _: &[u8]) -> Result<Vec<u8>, QueryError> {
        Err(QueryError::NotFound(format!("no query {query}")))
    }
}

/// A user's notifications and read markers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Notifications;

fn notification_prefix(user: &UserId) -> Vec<u8> {
    format!("n/{user}/").into_bytes()
}

fn notification_key(user: &UserId, seq: u64) -> Vec<u8> {
    let mut key = notification_prefix(user);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn unread_key(user: &UserId) -> Vec<u8> {
    format!("u/{user}").into_bytes()
}

fn marker_prefix(user: &UserId) -> Vec<u8> {
    format!("r/{user}/").into_bytes()
}

impl Projection for Notifications {
    fn name(&self) -> &'static str {
        notifications::VIEW
    }

    fn version(&self) -> u32 {
        1
    }

    fn stream(&self) -> Stream {
        Stream::Users
    }

    fn apply(&self, view: &dyn Read, seq: u64, event: &ChatEvent) -> Changes {
        let mut changes = Changes::none();
        let Ok(owner) = UserId::parse(event.subject()) else {
            return changes;
        };
        let seen = seen_key(&event.id);
        if view.get(&seen).is_some() {
            return changes;
        }
        // Where the event landed: notification ids are looked up by it.
        changes.put(seen, seq.to_be_bytes().to_vec());
        match &event.payload {
            Payload::NotificationCreated(n) => {
                let stored = NotificationView {
                    id: event.id,
                    room: n.room.clone(),
                    seq: n.seq,
                    message_id: n.message_id,
                    by: n.by.clone(),
                    text: n.text.clone(),
                    reason: n.reason.clone(),
                    time: event.time,
                    read: false,
                };
                changes.put_json(notification_key(&owner, seq), &stored);
                let mut unread: Vec<u64> = get_json(view, &unread_key(&owner)).unwrap_or_default();
                unread.push(seq);
                changes.put_json(unread_key(&owner), &unread);
            }
            // Only the owner marks its notifications read.
            Payload::NotificationRead(r) if event.user == owner => {
                let mut unread: Vec<u64> = get_json(view, &unread_key(&owner)).unwrap_or_default();
                let chosen: Vec<u64> = if r.all {
                    unread.clone()
                } else {
                    r.ids
                        .iter()
                        .filter_map(|id| view.get(&seen_key(id)))
                        .filter_map(|v| v.try_into().ok().map(u64::from_be_bytes))
                        .collect()
                };
                for at in chosen {
                    let key = notification_key(&owner, at);
                    if let Some(mut n) = get_json::<NotificationView>(view, &key)
                        && !n.read
                    {
                        n.read = true;
                        changes.put_json(key, &n);
                        unread.retain(|s| *s != at);
                    }
                }
                changes.put_json(unread_key(&owner), &unread);
            }
            Payload::ReadMarked(m) if event.user == owner => {
                let mut key = marker_prefix(&owner);
                key.extend_from_slice(m.room.as_str().as_bytes());
                let old = view
                    .get(&key)
                    .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
                    .unwrap_or(0);
                if m.seq > old {
                    changes.put(key, m.seq.to_be_bytes().to_vec());
                }
            }
            _ => {}
        }
        changes
    }

    fn queries(&self) -> &'static [&'static str] {
        &[notifications::LIST, notifications::MARKERS]
    }

    fn query(&self, view: &View, query: &str, request: &[u8]) -> Result<Vec<u8>, QueryError> {
        match query {
            notifications::LIST => answer(&list(view, parse_request(request)?)?),
            notifications::MARKERS => answer(&markers(view, parse_request(request)?)?),
            other => Err(QueryError::NotFound(format!("no query {other}"))),
        }
    }
}

/// `req.user`'s notifications, newest first: the first `req.limit` older than `req.before`, as
/// many as fit in [`MAX_ANSWER_BYTES`] (one at least, which fits: the event it comes from, at most
/// the stream's `max_msg_size`, holds its text as JSON too).
pub fn list(view: &View, req: NotificationsRequest) -> Result<NotificationsAnswer, QueryError> {
    // A page of none would say "more" for ever.
    if req.limit == 0 {
        return Err(QueryError::BadRequest("limit must be at least 1".into()));
    }
    let unread: Vec<u64> = get_json(view, &unread_key(&req.user)).unwrap_or_default();
    let prefix = notification_prefix(&req.user);
    let end = match &req.before {
        // Where that notification landed (any event of the user's log is a position).
        Some(id) => {
            let seq = view
                .get(&seen_key(id))
                .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
                .ok_or_else(|| QueryError::BadRequest(format!("no notification {id}")))?;
            notification_key(&req.user, seq)
        }
        None => notification_key(&req.user, u64::MAX),
    };
    let mut answer = NotificationsAnswer {
        notifications: Vec::new(),
        unread: unread.len(),
        has_more: false,
    };
    // The envelope as its longest (`false`), then each notification and the comma before it.
    let mut size = json_len(&answer);
    for entry in view.tree().range(prefix..end).rev() {
        let (_, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        let Ok(n) = serde_json::from_slice::<NotificationView>(&value) else {
            continue;
        };
        if req.unread_only && n.read {
            continue;
        }
        // One more the page leaves out.
        if answer.notifications.len() >= req.limit {
            answer.has_more = true;
            break;
        }
        let bytes = json_len(&n) + usize::from(!answer.notifications.is_empty());
        if !answer.notifications.is_empty() && size + bytes > MAX_ANSWER_BYTES {
            answer.has_more = true;
            break;
        }
        size += bytes;
        answer.notifications.push(n);
    }
    Ok(answer)
}

/// `req.user`'s read markers: those of the first [`MAX_MARKERS`] rooms by id.
pub fn markers(view: &View, req: MarkersRequest) -> Result<MarkersAnswer, QueryError> {
    let prefix = marker_prefix(&req.user);
    let mut markers: MarkersAnswer = BTreeMap::new();
    for entry in view.tree().scan_prefix(&prefix) {
        if markers.len() == MAX_MARKERS {
            break;
        }
        let (key, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        let room = std::str::from_utf8(&key[prefix.len()..])
            .ok()
            .and_then(|r| RoomId::parse(r).ok());
        let seq = value.as_ref().try_into().ok().map(u64::from_be_bytes);
        if let (Some(room), Some(seq)) = (room, seq) {
            markers.insert(room, seq);
        }
    }
    Ok(markers)
}

#[cfg(test)]
mod tests;
