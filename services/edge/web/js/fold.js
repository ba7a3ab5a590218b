// The history fold: a room's messages as this page knows them (its timeline) and what each stored
// event does to them. The rules are the history view's (services/history/src/lib.rs), and both
// folds run the same fixtures (events/fixtures/fold/; tests/web/fold.test.mjs here,
// services/history/tests/fold_fixtures.rs there):
// - an event whose id was applied already is not applied again;
// - only a message's author edits or deletes it, but a function's delete (source
//   `/chatlog/function/<name>`, stored only where the operator granted it moderation) is a
//   moderator's and marks the message `moderated`; a deleted message stays deleted, without text,
//   mentions or reactions (later edits and reactions change nothing);
// - reactions are a set of users per emoji: the same user adding one twice counts once;
// - an edit, delete or reaction naming a message the timeline does not have waits for it (the
//   message may be older than the history loaded), and applies only if it came after it: one
//   stored before its message is ignored, as by the view.
// Stored events may be redacted (a deleted message's post and edits are served as
// `{"deleted": true}`, without text or user), so every field is checked before use.
//
// No DOM, no globals, no I/O. Messages are values, never changed: a change makes a new message
// object (render.js redraws a message when its object is another). The timeline's index is
// updated in place: a catch-up can bring thousands of events, and copying the room for each
// would make it quadratic.

import { isObject, str, strList } from './protocol.js';

const POSTED = 'chat.message.posted';
const EDITED = 'chat.message.edited';
const DELETED = 'chat.message.deleted';
const REACTION_ADDED = 'chat.reaction.added';
const REACTION_REMOVED = 'chat.reaction.removed';
const FUNCTION_SOURCE = '/chatlog/function/';
const CHANGES = new Set([EDITED, DELETED, REACTION_ADDED, REACTION_REMOVED]);

const SEEN_MAX = 5000; // event ids remembered per room, to apply each once
const WAITING_MAX = 1000; // messages with changes waiting for them (the oldest dropped past that)

const NO_REACTIONS = new Map();
const NO_ATTACHMENTS = Object.freeze([]);
const MAX_ATTACHMENTS = 10;

/** A message's attachments as given (JSON), each `{id, name, size, content_type}` checked. */
function attachmentList(list) {
  if (!Array.isArray(list)) return NO_ATTACHMENTS;
  const ok = list.filter((a) => isObject(a) && typeof a.id === 'string' && a.id
    && typeof a.name === 'string' && Number.isSafeInteger(a.size) && a.size >= 0
    && typeof a.content_type === 'string').slice(0, MAX_ATTACHMENTS)
    .map((a) => Object.freeze({ id: a.id, name: a.name, size: a.size, content_type: a.content_type }));
  return ok.length ? Object.freeze(ok) : NO_ATTACHMENTS;
}

/**
 * An empty timeline: `list` the messages in order (stored ones by seq, then this page's unsent
 * ones in the order written), `byId` the same by id, `waiting` changes for messages not here yet.
 */
export function newTimeline() {
  return { list: [], byId: new Map(), waiting: new Map(), seen: new Set(), seenOrder: [] };
}

/**
 * A message from a history answer, an event's data or this page (`pending`: not stored yet,
 * `local`: its order among those); any field may be missing. `reactions`: emoji to users, as an
 * object (JSON) or a Map.
 */
export function message(fields) {
  const deleted = fields.deleted === true;
  let reactions = NO_REACTIONS;
  if (!deleted && fields.reactions instanceof Map) {
    reactions = fields.reactions;
  } else if (!deleted && isObject(fields.reactions)) {
    reactions = new Map(Object.entries(fields.reactions)
      .map(([emoji, users]) => [emoji, Object.freeze([...new Set(strList(users))].sort())])
      .filter(([emoji, users]) => emoji && users.length));
  }
  return Object.freeze({
    id: fields.id,
    seq: typeof fields.seq === 'number' ? fields.seq : null,
    local: fields.local ?? 0,
    user: str(fields.user),
    text: deleted ? '' : str(fields.text),
    time: str(fields.time),
    reply_to: str(fields.reply_to, null),
    edited: fields.edited === true,
    deleted,
    moderated: deleted && fields.moderated === true,
    mentions: Object.freeze(deleted ? [] : strList(fields.mentions)),
    attachments: deleted ? NO_ATTACHMENTS : attachmentList(fields.attachments),
    reactions,
    pending: fields.pending === true,
    failed: fields.failed || null,
  });
}

/** `m` with `fields` changed. */
export const withFields = (m, fields) => Object.freeze({ ...m, ...fields });

const tombstone = (m, moderated = false) => withFields(m, {
  deleted: true, moderated, text: '', mentions: Object.freeze([]), attachments: NO_ATTACHMENTS, reactions: NO_REACTIONS,
});

/**
 * What edit, delete or reaction `event` does to message `m`: a new message, or `m` itself when
 * the event changes nothing. Pure: the rules of the view's projection, one arm per event type.
 */
export function foldMessage(m, event) {
  const d = isObject(event.data) ? event.data : {};
  const by = str(d.user); // who acted
  switch (event.type) {
    case EDITED:
      if (m.deleted || !by || by !== m.user || typeof d.text !== 'string') return m;
      return withFields(m, { text: d.text, edited: true });
    case DELETED: {
      if (m.deleted || !by) return m;
      if (by === m.user) return tombstone(m);
      // A function's own answer deleted by itself is its author's delete, above.
      return str(event.source).startsWith(FUNCTION_SOURCE) ? tombstone(m, true) : m;
    }
    case REACTION_ADDED: {
      const emoji = str(d.emoji);
      const users = m.reactions.get(emoji) || [];
      if (m.deleted || !emoji || !by || users.includes(by)) return m;
      const reactions = new Map(m.reactions).set(emoji, Object.freeze([...users, by].sort()));
      return withFields(m, { reactions });
    }
    case REACTION_REMOVED: {
      const emoji = str(d.emoji);
      const users = m.reactions.get(emoji);
      if (!users || !users.includes(by)) return m;
      const reactions = new Map(m.reactions);
      const rest = users.filter((u) => u !== by);
      if (rest.length) reactions.set(emoji, Object.freeze(rest)); else reactions.delete(emoji);
      return withFields(m, { reactions });
    }
    default:
      return m;
  }
}

// ------------------------------------------------------------------ the timeline

const key = (m) => (m.seq != null ? m.seq : 1e15 + m.local);

/** Where `m` is in the list (-1: not there); a binary search, as the list is sorted by key. */
export function indexOf(t, m) {
  let lo = 0;
  let hi = t.list.length;
  const k = key(m);
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(t.list[mid]) < k) lo = mid + 1; else hi = mid;
  }
  return t.list[lo] === m ? lo : t.list.indexOf(m);
}

/** Adds `m` (not in `t` yet) at its place. */
export function insert(t, m) {
  let lo = 0;
  let hi = t.list.length;
  const k = key(m);
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(t.list[mid]) < k) lo = mid + 1; else hi = mid;
  }
  t.list.splice(lo, 0, m);
  t.byId.set(m.id, m);
}

export function remove(t, m) {
  const i = indexOf(t, m);
  if (i >= 0) t.list.splice(i, 1);
  if (t.byId.get(m.id) === m) t.byId.delete(m.id);
}

/** Puts `after` where `before` was (moving it when its seq changed); returns `after`. */
export function replace(t, before, after) {
  if (after === before) return after;
  if (key(after) === key(before)) {
    const i = indexOf(t, before);
    if (i >= 0) t.list[i] = after;
    t.byId.set(after.id, after);
  } else {
    remove(t, before);
    insert(t, after);
  }
  return after;
}

/** Records event id `id`; false when it was seen already. */
function firstTime(t, id) {
  if (!id) return true;
  if (t.seen.has(id)) return false;
  t.seen.add(id);
  t.seenOrder.push(id);
  if (t.seenOrder.length > SEEN_MAX) t.seen.delete(t.seenOrder.shift());
  return true;
}

/** Applies change `event` (seq `seq`) to `m`, when it came after the message. */
function change(t, m, seq, event) {
  if (m.seq != null && seq <= m.seq) return m;
  return replace(t, m, foldMessage(m, event));
}

/** `m`, just added, with the changes that were waiting for it. */
function catchUp(t, m) {
  const waiting = t.waiting.get(m.id);
  if (!waiting) return m;
  t.waiting.delete(m.id);
  let now = m;
  for (const { seq, event } of waiting) now = change(t, now, seq, event);
  return now;
}

/**
 * Applies stored event `event`, seq `seq`, of the room. Returns null when its id was applied
 * already (the caller ignores it too), else `{before, after}`: the message it is about before
 * and after (the same object when nothing changed; both undefined when it is about no message
 * here, as `chat.room.*` events are, or when it waits for its message).
 */
export function applyEvent(t, seq, event) {
  if (!firstTime(t, str(event.id))) return null;
  const d = isObject(event.data) ? event.data : {};
  if (event.type === POSTED) return posted(t, seq, event, d);
  if (!CHANGES.has(event.type)) return {};
  const target = str(d.message_id); // none in a redacted edit
  if (!target) return {};
  const before = t.byId.get(target);
  if (!before) {
    const list = t.waiting.get(target) || [];
    list.push({ seq, event });
    t.waiting.set(target, list);
    if (t.waiting.size > WAITING_MAX) t.waiting.delete(t.waiting.keys().next().value);
    return {};
  }
  return { before, after: change(t, before, seq, event) };
}

/**
 * A `chat.message.posted`: a new message, or the log's copy of one this page has without its
 * post: one it sent (acked or not), or one from a history page.
 */
function posted(t, seq, event, d) {
  if (!str(event.id)) return {};
  const before = t.byId.get(event.id);
  if (before) {
    // At another seq it is another event with the same id: applied once, at the first.
    if (before.seq != null && before.seq !== seq) return { before, after: before };
    let after = withFields(before, { seq, pending: false, failed: null, time: str(event.time, before.time) });
    if (d.deleted === true && !after.deleted) after = tombstone(after, d.moderated === true);
    return { before, after: replace(t, before, after) };
  }
  const m = message({
    id: event.id, seq, user: d.user, text: d.text, time: event.time, reply_to: d.reply_to,
    mentions: d.mentions, attachments: d.attachments, edited: d.edited, deleted: d.deleted,
    moderated: d.moderated,
  });
  insert(t, m);
  return { before: undefined, after: catchUp(t, m) };
}

/**
 * Merges a page of the history API (messages as the view folded them) into `t`. Returns the
 * messages `added`, and those of this page that the answer shows `stored` (they get their seq).
 */
export function mergePage(t, messages) {
  const added = [];
  const stored = [];
  for (const raw of messages) {
    if (!isObject(raw) || typeof raw.id !== 'string' || !raw.id) continue;
    const have = t.byId.get(raw.id);
    if (!have) {
      const m = message(raw);
      insert(t, m);
      added.push(catchUp(t, m));
    } else if (have.seq == null && typeof raw.seq === 'number') {
      stored.push(replace(t, have, withFields(have, { seq: raw.seq, pending: false, failed: null })));
    }
    // Otherwise what the timeline has is at least as new.
  }
  return { added, stored };
}
