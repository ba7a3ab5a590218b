//! `chatlog-history`: the history view, a pure projection of `CHAT_ROOMS`.
//!
//! It keeps every room's messages by seq with edits, deletes (a tombstone: `deleted`, text gone),
//! reactions and `reply_to` folded in, and the room directory (name, topic, privacy, members,
//! last seq). It answers `views.history.messages`, `.message`, `.room`, `.rooms`, `.unread` and
//! `.current`, each answer within [`MAX_ANSWER_BYTES`] whatever is stored (NATS drops a reply over
//! its `max_payload`): pages are cut by bytes as well as by count, and say how to ask on; what one
//! item carries is capped (a message's reactions, a listed room's members); the lists that are not
//! paged are capped by count. See each query's request in [`chatlog_events::queries`].
//!
//! Keys:
//! - `i/<first 6 bytes of an event id>` (and `j/<event id>` past a group's size, see [`index`]) →
//!   `<room>/<seq><block>` (8 bytes big-endian each) per event id: every event applied (an id
//!   seen twice is applied once) and, for messages, where the message is;
//! - `m/<room>/<first seq, 8 bytes big-endian>` → a block of up to [`BLOCK`] consecutive messages
//!   of the room, one [`MessageView`] JSON per line, in seq order;
//! - `t/<room>` → the room's open block (its first seq) and how many messages it holds;
//! - `r/<room>` → [`RoomView`] JSON; `members` are the listed members of a private room and, for
//!   any room, those who joined it (`chat.member.joined`), less those who left or were removed.
//!
//! Rules beyond the protocol's: a membership event applies only when [`membership::allowed`] says
//! so (the rule the edge checks before appending it); only a message's author may edit or delete
//! it, but a function's delete (source `/chatlog/function/<name>`) is a moderator's: the
//! functions runtime appends one only where the operator granted that function moderation of the
//! room, and it marks the message `moderated`; a deleted message stays deleted (later edits and reactions are ignored); an edit, delete or reaction naming an
//! unknown message, or a message of another room, is ignored (the edge only writes them for
//! existing messages, so such an event did not come from it).

use std::collections::BTreeMap;

use std::ops::Bound;

use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, Stream, UserId, functions, membership,
    queries::{
        Current, CurrentAnswer, CurrentRequest, DEFAULT_ROOMS, ListedRoom, MAX_ANSWER_BYTES,
        MAX_CURRENT_IDS, MAX_LISTED_MEMBERS, MAX_MEMBERS_ASKED, MAX_REACTION_USERS,
        MAX_REACTIONS_BYTES, MAX_ROOMS, MAX_UNREAD_ROOMS, MessageRequest, MessageView,
        MessagesAnswer, MessagesRequest, RoomRequest, RoomView, RoomsAnswer, RoomsRequest,
        UnreadAnswer, UnreadRequest, history, json_len,
    },
};
use chatlog_runtime::{
    Changes, Projection, QueryError, Read, View, answer, get_json, get_to_grow, parse_request,
};

mod index;

/// Most messages one `messages` query answers.
pub const MAX_PAGE: usize = 200;

/// Messages per block. sled copies a leaf on every insert, and an insert per message was half of
/// the projection's cost: within a batch the messages of a room go to one block, written once.
pub const BLOCK: u32 = 16;

/// The history projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct History;

fn message_prefix(room: &RoomId) -> Vec<u8> {
    let mut key = b"m/".to_vec();
    key.extend_from_slice(room.as_str().as_bytes());
    key.push(b'/');
    key
}

fn message_key(room: &RoomId, seq: u64) -> Vec<u8> {
    let mut key = message_prefix(room);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn room_key(room: &RoomId) -> Vec<u8> {
    let mut key = b"r/".to_vec();
    key.extend_from_slice(room.as_str().as_bytes());
    key
}

/// The room's open block: where its next message goes.
fn tail_key(room: &RoomId) -> Vec<u8> {
    let mut key = b"t/".to_vec();
    key.extend_from_slice(room.as_str().as_bytes());
    key
}

/// (first seq of the open block, messages in it).
fn read_tail(view: &dyn Read, room: &RoomId) -> (u64, u32) {
    view.get(&tail_key(room))
        .and_then(|v| {
            let block = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            let count = u32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
            Some((block, count))
        })
        .unwrap_or((0, 0))
}

fn tail_value(block: u64, count: u32) -> Vec<u8> {
    let mut v = block.to_be_bytes().to_vec();
    v.extend_from_slice(&count.to_be_bytes());
    v
}

/// The lines of a block, one message each.
fn block_lines(block: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
    block.split(|b| *b == b'\n').filter(|line| !line.is_empty())
}

/// The messages of a block, in seq order (unreadable lines skipped).
fn block_messages(block: &[u8]) -> impl DoubleEndedIterator<Item = MessageView> + '_ {
    block_lines(block).filter_map(|line| serde_json::from_slice(line).ok())
}

/// The message `seq` of a block, and its line.
pub(crate) fn find_in_block(block: &[u8], seq: u64) -> Option<(usize, MessageView)> {
    // Indexed by line, as `replace_in_block` counts them (an unreadable line still counts).
    block_lines(block)
        .enumerate()
        .filter_map(|(i, line)| Some((i, serde_json::from_slice::<MessageView>(line).ok()?)))
        .find(|(_, m)| m.seq == seq)
}

/// The block with line `index` replaced by `message`.
fn replace_in_block(block: &[u8], index: usize, message: &MessageView) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 64);
    for (i, line) in block_lines(block).enumerate() {
        if i == index {
            push_line(&mut out, message);
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn push_line(out: &mut Vec<u8>, message: &MessageView) {
    // serde_json writes no raw newline: one message per line.
    if serde_json::to_writer(&mut *out, message).is_ok() {
        out.push(b'\n');
    }
}

/// The room's last seq, kept apart from its directory entry: every event moves it, and rewriting
/// the whole entry (members and all) for each message would cost a JSON round trip per event.
fn last_seq_key(room: &RoomId) -> Vec<u8> {
    let mut key = b"s/".to_vec();
    key.extend_from_slice(room.as_str().as_bytes());
    key
}

/// The directory entry of `room`, with its last seq.
fn room_view(view: &dyn Read, room: &RoomId) -> Option<RoomView> {
    let found: RoomView = get_json(view, &room_key(room))?;
    Some(with_last_seq(view, found))
}

/// A directory entry read, with its last seq.
fn with_last_seq(view: &dyn Read, mut room: RoomView) -> RoomView {
    room.last_seq = view
        .get(&last_seq_key(&room.id))
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(room.last_seq);
    room
}

/// Where an event was applied: `<room>/<seq><block>` (block 0 for events that are not messages).
fn location(room: &RoomId, seq: u64, block: u64) -> Vec<u8> {
    let mut v = room.as_str().as_bytes().to_vec();
    v.push(b'/');
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&block.to_be_bytes());
    v
}

fn parse_location(bytes: &[u8]) -> Option<(RoomId, u64, u64)> {
    let split = bytes.len().checked_sub(17)?;
    let (room, rest) = bytes.split_at(split);
    let seq = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
    let block = u64::from_be_bytes(rest.get(9..17)?.try_into().ok()?);
    let room = RoomId::parse(std::str::from_utf8(room).ok()?).ok()?;
    Some((room, seq, block))
}

/// A message found in its block: the block's key and bytes, its line, the message.
struct Found {
    key: Vec<u8>,
    block: Vec<u8>,
    index: usize,
    message: MessageView,
}

impl Found {
    /// Writes the block back with `self.message` as changed.
    fn put(self, changes: &mut Changes) {
        let block = replace_in_block(&self.block, self.index, &self.message);
        changes.put(self.key, block);
    }
}

/// The message event `id` is, if any (a seq with no block is not a message).
fn find_message(view: &dyn Read, id: &EventId) -> Option<(RoomId, Found)> {
    let (room, seq, block) = parse_location(&index::find(view, id)?)?;
    let key = message_key(&room, block);
    let bytes = view.get(&key)?;
    let (index, message) = find_in_block(&bytes, seq)?;
    Some((
        room,
        Found {
            key,
            block: bytes,
            index,
            message,
        },
    ))
}

/// The message `id` stands for, if it is a message of `room`.
fn message_in(view: &dyn Read, room: &RoomId, id: &EventId) -> Option<Found> {
    let (at_room, found) = find_message(view, id)?;
    (&at_room == room).then_some(found)
}

impl Projection for History {
    fn name(&self) -> &'static str {
        history::VIEW
    }

    fn version(&self) -> u32 {
        // 2: public rooms keep their joined members too. 3: the last seq under its own key.
        // 4: messages in blocks. 5: event ids indexed in groups. 6: groups sorted by id.
        // 7: membership events only as `membership::allowed` says.
        7
    }

    fn stream(&self) -> Stream {
        Stream::Rooms
    }

    fn apply(&self, view: &dyn Read, seq: u64, event: &ChatEvent) -> Changes {
        let mut changes = Changes::none();
        let Some(room) = event.room() else {
            return changes;
        };
        let ids = index::Group::read(view, &event.id);
        if ids.find(view, &event.id).is_some() {
            return changes; // seen: applied once already
        }
        let mut block = 0;

        let key = room_key(&room);
        // Only directory events read and write the directory entry.
        let directory_event = matches!(
            event.payload,
            Payload::RoomCreated(_)
                | Payload::RoomUpdated(_)
                | Payload::MemberJoined(_)
                | Payload::MemberLeft(_)
        );
        let mut directory: Option<RoomView> = if directory_event {
            get_json(view, &key)
        } else {
            None
        };
        let known_room = directory.is_some() || view.get(&last_seq_key(&room)).is_some();
        // Judged on the room as it was before this event.
        let allowed = membership::allowed(directory.as_ref(), &event.user, &event.payload);
        match &event.payload {
            Payload::RoomCreated(created) if directory.is_none() => {
                directory = Some(RoomView {
                    id: room.clone(),
                    name: created.name.clone(),
                    topic: created.topic.clone(),
                    private: created.private,
                    members: if created.private {
                        created.members.clone()
                    } else {
                        Vec::new()
                    },
                    creator: event.user.clone(),
                    last_seq: seq,
                });
            }
            Payload::RoomUpdated(updated) => {
                if let Some(d) = directory.as_mut() {
                    if let Some(name) = &updated.name {
                        d.name = name.clone();
                    }
                    if let Some(topic) = &updated.topic {
                        d.topic = topic.clone();
                    }
                }
            }
            Payload::MemberJoined(m) => {
                if allowed
                    && let Some(d) = directory.as_mut()
                    && !d.members.contains(&m.member)
                {
                    d.members.push(m.member.clone());
                }
            }
            Payload::MemberLeft(m) => {
                if allowed && let Some(d) = directory.as_mut() {
                    d.members.retain(|u| u != &m.member);
                }
            }
            Payload::MessagePosted(posted) => {
                let message = MessageView {
                    seq,
                    id: event.id,
                    room: room.clone(),
                    user: event.user.clone(),
                    text: posted.text.clone(),
                    time: event.time,
                    reply_to: posted.reply_to,
                    edited: false,
                    deleted: false,
                    moderated: false,
                    reactions: BTreeMap::new(),
                    mentions: posted.mentions.clone(),
                    attachments: posted.attachments.clone(),
                    // Only answers carry it: the view keeps every reaction.
                    reaction_counts: BTreeMap::new(),
                };
                let (open, count) = read_tail(view, &room);
                let (first, mut bytes, count) = if count > 0 && count < BLOCK {
                    let key = message_key(&room, open);
                    // One copy, with room for the line: the block grows by one message.
                    let bytes = get_to_grow(view, &key, 512).unwrap_or_default();
                    (open, bytes, count + 1)
                } else {
                    (seq, Vec::with_capacity(512), 1)
                };
                push_line(&mut bytes, &message);
                changes.put(message_key(&room, first), bytes);
                changes.put(tail_key(&room), tail_value(first, count));
                block = first;
            }
            Payload::MessageEdited(edit) => {
                if let Some(mut found) = message_in(view, &room, &edit.message_id)
                    && found.message.user == event.user
                    && !found.message.deleted
                {
                    found.message.text = edit.text.clone();
                    found.message.edited = true;
                    found.put(&mut changes);
                }
            }
            Payload::MessageDeleted(delete) => {
                let moderation = functions::is_function(&event.component);
                if let Some(mut found) = message_in(view, &room, &delete.message_id)
                    && (found.message.user == event.user || moderation)
                    && !found.message.deleted
                {
                    let message = &mut found.message;
                    message.deleted = true;
                    // A function deleting its own answer is its author, not a moderator.
                    message.moderated = message.user != event.user;
                    message.text.clear();
                    message.mentions.clear();
                    message.attachments.clear();
                    message.reactions.clear();
                    found.put(&mut changes);
                }
            }
            Payload::ReactionAdded(reaction) => {
                if let Some(mut found) = message_in(view, &room, &reaction.message_id)
                    && !found.message.deleted
                {
                    let users = found
                        .message
                        .reactions
                        .entry(reaction.emoji.clone())
                        .or_default();
                    if let Err(at) = users.binary_search(&event.user) {
                        users.insert(at, event.user.clone());
                        found.put(&mut changes);
                    }
                }
            }
            Payload::ReactionRemoved(reaction) => {
                if let Some(mut found) = message_in(view, &room, &reaction.message_id)
                    && let Some(users) = found.message.reactions.get_mut(&reaction.emoji)
                    && let Ok(at) = users.binary_search(&event.user)
                {
                    users.remove(at);
                    if users.is_empty() {
                        found.message.reactions.remove(&reaction.emoji);
                    }
                    found.put(&mut changes);
                }
            }
            _ => {}
        }
        ids.record(&mut changes, &event.id, &location(&room, seq, block));
        if let Some(d) = directory {
            changes.put_json(key, &d);
        }
        if known_room || matches!(event.payload, Payload::RoomCreated(_)) {
            changes.put(last_seq_key(&room), seq.to_be_bytes().to_vec());
        }
        changes
    }

    fn queries(&self) -> &'static [&'static str] {
        &[
            history::MESSAGES,
            history::MESSAGE,
            history::ROOM,
            history::ROOMS,
            history::UNREAD,
            history::CURRENT,
        ]
    }

    fn query(&self, view: &View, query: &str, request: &[u8]) -> Result<Vec<u8>, QueryError> {
        match query {
            history::MESSAGES => answer(&messages(view, parse_request(request)?)?),
            history::MESSAGE => {
                let req: MessageRequest = parse_request(request)?;
                let found = find_message(view, &req.id).map(|(_, found)| capped(found.message));
                answer(&found)
            }
            history::ROOM => answer(&room(view, parse_request(request)?)?),
            history::ROOMS => answer(&rooms(view, parse_request(request)?)?),
            history::UNREAD => answer(&unread(view, parse_request(request)?)?),
            history::CURRENT => answer(&current(view, parse_request(request)?)?),
            other => Err(QueryError::NotFound(format!("no query {other}"))),
        }
    }
}

/// `message` as an answer carries it: at most [`MAX_REACTION_USERS`] users listed per emoji (the
/// first by id; how many in all in `reaction_counts`), the most reacted emoji first as long as
/// the reactions' JSON stays within [`MAX_REACTIONS_BYTES`] (an emoji that would not fit is left
/// out). The stored message keeps every reaction. Users are unbounded (anyone may react), and so
/// are emoji (a user may react with as many as it likes): without this, one message could pass
/// any bound.
pub fn capped(mut message: MessageView) -> MessageView {
    if message.reactions.is_empty()
        || (message
            .reactions
            .values()
            .all(|users| users.len() <= MAX_REACTION_USERS)
            && json_len(&message.reactions) <= MAX_REACTIONS_BYTES)
    {
        return message;
    }
    let mut all: Vec<(String, Vec<UserId>)> =
        std::mem::take(&mut message.reactions).into_iter().collect();
    // The most reacted first; a stable sort keeps ties in the map's order (by emoji).
    all.sort_by_key(|(_, users)| std::cmp::Reverse(users.len()));
    // `{}` of both maps, then per emoji `"emoji":[...],` and, when cut, `"emoji":count,`.
    let mut used = 4;
    for (emoji, mut users) in all {
        let count = users.len();
        let cut = count > MAX_REACTION_USERS;
        users.truncate(MAX_REACTION_USERS);
        let key = json_len(&emoji) + 1;
        let mut bytes = key + json_len(&users) + 1;
        if cut {
            bytes += key + json_len(&count) + 1;
        }
        if used + bytes > MAX_REACTIONS_BYTES {
            continue;
        }
        used += bytes;
        if cut {
            message.reaction_counts.insert(emoji.clone(), count);
        }
        message.reactions.insert(emoji, users);
    }
    message
}

/// The room `req.room`, with the members `req.members` asks about, or all of them while the
/// answer fits in [`MAX_ANSWER_BYTES`] (see [`RoomRequest`]).
pub fn room(view: &dyn Read, req: RoomRequest) -> Result<Option<RoomView>, QueryError> {
    if let Some(asked) = &req.members
        && asked.len() > MAX_MEMBERS_ASKED
    {
        return Err(QueryError::BadRequest(format!(
            "ask about at most {MAX_MEMBERS_ASKED} members"
        )));
    }
    let Some(mut room) = room_view(view, &req.room) else {
        return Ok(None);
    };
    match req.members {
        Some(asked) => {
            let asked: std::collections::BTreeSet<UserId> = asked.into_iter().collect();
            room.members.retain(|m| asked.contains(m));
        }
        // Creation bounds a private room's members, but additions and a public room's joins
        // have no bound.
        None if json_len(&room) > MAX_ANSWER_BYTES => {
            return Err(QueryError::BadRequest(format!(
                "room {} has {} members, too many for one answer: name the users asked about \
                 (`members`)",
                room.id,
                room.members.len()
            )));
        }
        None => {}
    }
    Ok(Some(room))
}

/// `room` as the directory lists it to `asker` (see [`ListedRoom`]).
fn listed(mut room: RoomView, asker: &UserId) -> ListedRoom {
    let member_count = room.members.len();
    if !room.private {
        room.members = Vec::new();
    } else if room.members.len() > MAX_LISTED_MEMBERS {
        let asker_at = room.members.iter().position(|m| m == asker);
        room.members.truncate(MAX_LISTED_MEMBERS);
        if asker_at.is_some_and(|at| at >= MAX_LISTED_MEMBERS) {
            room.members[MAX_LISTED_MEMBERS - 1] = asker.clone();
        }
    }
    ListedRoom { room, member_count }
}

/// The rooms `req.user` may see, by id, the first `req.limit` after `req.after`, as many as fit
/// in [`MAX_ANSWER_BYTES`] (one at least, which always fits: its name and topic come from stored
/// events, bounded by the stream's `max_msg_size`, and its listed members are capped).
pub fn rooms(view: &View, req: RoomsRequest) -> Result<RoomsAnswer, QueryError> {
    let limit = req.limit.unwrap_or(DEFAULT_ROOMS);
    if limit == 0 || limit > MAX_ROOMS {
        return Err(QueryError::BadRequest(format!(
            "limit must be 1 to {MAX_ROOMS}"
        )));
    }
    // `r/<room>` keys sort as the room ids do.
    let start = match &req.after {
        Some(after) => Bound::Excluded(room_key(after)),
        None => Bound::Included(b"r/".to_vec()),
    };
    let mut answer = RoomsAnswer {
        rooms: Vec::new(),
        has_more: false,
    };
    let mut size = json_len(&answer);
    for entry in view.tree().range((start, Bound::Unbounded)) {
        let (key, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        if !key.starts_with(b"r/") {
            break;
        }
        let Ok(room) = serde_json::from_slice::<RoomView>(&value) else {
            continue;
        };
        if !room.visible_to(&req.user) {
            continue;
        }
        // A room the user may see after the last one answered: there is more.
        if answer.rooms.len() == limit {
            answer.has_more = true;
            break;
        }
        let room = listed(with_last_seq(view, room), &req.user);
        let bytes = json_len(&room) + usize::from(!answer.rooms.is_empty());
        if !answer.rooms.is_empty() && size + bytes > MAX_ANSWER_BYTES {
            answer.has_more = true;
            break;
        }
        size += bytes;
        answer.rooms.push(room);
    }
    Ok(answer)
}

/// Each message of `req.room` among `req.ids` as it is now.
pub fn current(view: &dyn Read, req: CurrentRequest) -> Result<CurrentAnswer, QueryError> {
    if req.ids.len() > MAX_CURRENT_IDS {
        return Err(QueryError::BadRequest(format!(
            "at most {MAX_CURRENT_IDS} ids"
        )));
    }
    let mut answer = CurrentAnswer {
        messages: BTreeMap::new(),
        next: None,
    };
    // The envelope as its longest: with a `next`.
    let mut size = json_len(&CurrentAnswer {
        next: Some(MAX_CURRENT_IDS),
        ..answer.clone()
    });
    for (at, id) in req.ids.iter().enumerate() {
        if answer.messages.contains_key(id) {
            continue;
        }
        let Some(Found { message, .. }) = message_in(view, &req.room, id) else {
            continue;
        };
        let current = Current {
            deleted: message.deleted,
            moderated: message.moderated,
            edited: message.edited,
            text: message.text,
        };
        // `"id":{...}` and a comma before it but the first. One at least: a text is bounded by the
        // stream's largest event, which holds it as JSON too.
        let bytes =
            json_len(id) + 1 + json_len(&current) + usize::from(!answer.messages.is_empty());
        if !answer.messages.is_empty() && size + bytes > MAX_ANSWER_BYTES {
            if !req.partial {
                return Err(QueryError::BadRequest(format!(
                    "the answer would pass {MAX_ANSWER_BYTES} bytes: ask with `partial` and on \
                     from `next`, or ask about fewer ids"
                )));
            }
            answer.next = Some(at);
            break;
        }
        size += bytes;
        answer.messages.insert(*id, current);
    }
    Ok(answer)
}

/// The first seq of a block, from its key.
fn block_first_seq(key: &[u8]) -> Option<u64> {
    let at = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key.get(at..)?.try_into().ok()?))
}

/// Most messages counted per room by `unread` (a client shows "999+" long before).
pub const MAX_UNREAD: u64 = 10_000;

/// Per room `user` is a member of (the first [`MAX_UNREAD_ROOMS`] by id): the messages after its
/// marker, not its own, not deleted.
pub fn unread(view: &View, req: UnreadRequest) -> Result<UnreadAnswer, QueryError> {
    let mut rooms = BTreeMap::new();
    for entry in view.tree().scan_prefix(b"r/") {
        if rooms.len() == MAX_UNREAD_ROOMS {
            break;
        }
        let (_, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        let Ok(room) = serde_json::from_slice::<RoomView>(&value) else {
            continue;
        };
        if !room.members.contains(&req.user) {
            continue;
        }
        let after = req.markers.get(&room.id).copied().unwrap_or(0);
        let start = message_key(&room.id, 0);
        let end = message_key(&room.id, u64::MAX);
        let mut count = 0;
        // Newest block first, until the block holding the marker.
        'blocks: for entry in view.tree().range(start..end).rev() {
            let (key, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
            for m in block_messages(&value).rev() {
                if m.seq <= after {
                    break 'blocks;
                }
                if m.user != req.user && !m.deleted {
                    count += 1;
                    if count >= MAX_UNREAD {
                        break 'blocks;
                    }
                }
            }
            if block_first_seq(&key).is_some_and(|first| first <= after) {
                break;
            }
        }
        rooms.insert(room.id, count);
    }
    Ok(UnreadAnswer { rooms })
}

/// The latest `limit` messages with seq < `before`, oldest first, as many as fit in
/// [`MAX_ANSWER_BYTES`].
pub fn messages(view: &View, req: MessagesRequest) -> Result<MessagesAnswer, QueryError> {
    if req.limit == 0 || req.limit > MAX_PAGE {
        return Err(QueryError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let before = req.before.unwrap_or(u64::MAX);
    let start = message_key(&req.room, 0);
    // Blocks that start before `before` (the last of them may also hold later messages).
    let end = message_key(&req.room, before);
    let mut messages = Vec::with_capacity(req.limit.min(BLOCK as usize));
    let mut has_more = false;
    // The envelope as its longest (`false`), then each message and the comma before it.
    let mut size = json_len(&MessagesAnswer {
        messages: Vec::new(),
        has_more: false,
    });
    'blocks: for entry in view.tree().range(start..end).rev() {
        let (_, value) = entry.map_err(|e| QueryError::Internal(e.to_string()))?;
        for message in block_messages(&value).rev() {
            if message.seq >= before {
                continue;
            }
            if messages.len() == req.limit {
                has_more = true;
                break 'blocks;
            }
            let message = capped(message);
            let bytes = json_len(&message) + usize::from(!messages.is_empty());
            // The first message goes in whatever its size, so that paging always moves on; it
            // fits anyway, capped (see `MessageView`).
            if !messages.is_empty() && size + bytes > MAX_ANSWER_BYTES {
                has_more = true;
                break 'blocks;
            }
            size += bytes;
            messages.push(message);
        }
    }
    messages.reverse();
    Ok(MessagesAnswer { messages, has_more })
}

#[cfg(test)]
mod tests;
