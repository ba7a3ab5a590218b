// The web client's history fold (services/edge/web/js/fold.js) against the fixtures the history
// view's projection runs too (events/fixtures/fold/; services/history/tests/fold_fixtures.rs),
// then a few cases of the client's own: history pages, its own messages, changes waiting for
// their message.
//
//   node --test tests/web/

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  applyEvent, foldMessage, insert, mergePage, message, newTimeline, replace, withFields,
} from '../../services/edge/web/js/fold.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dir = path.join(root, 'events', 'fixtures', 'fold');
const fixtures = readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
  .map((f) => ({ file: f, ...JSON.parse(readFileSync(path.join(dir, f), 'utf8')) }));

/** A message in the fixtures' shape. */
const common = (m) => ({
  seq: m.seq,
  id: m.id,
  author: m.user || null,
  text: m.text,
  edited: m.edited,
  deleted: m.deleted,
  reply_to: m.reply_to,
  reactions: Object.fromEntries(m.reactions),
  ...(m.moderated ? { moderated: true } : {}),
  ...(m.attachments.length ? { attachments: m.attachments.map((a) => ({ ...a })) } : {}),
});

/** The fixture's events (`form`: `event` as stored, or `served`) as the client folds them, per room. */
function fold(fixture, form) {
  const rooms = new Map();
  for (const entry of fixture.events) {
    if (!rooms.has(entry.room)) rooms.set(entry.room, newTimeline());
    applyEvent(rooms.get(entry.room), entry.seq, entry[form] || entry.event);
  }
  return (rooms.get(fixture.room) || newTimeline()).list.map(common);
}

test('there are fixtures', () => assert.ok(fixtures.length >= 10, `${fixtures.length} in ${dir}`));

for (const fixture of fixtures) {
  test(`fixture ${fixture.file} (${fixture.name}): live, as stored`, () => {
    assert.deepEqual(fold(fixture, 'event'), fixture.messages);
  });
  test(`fixture ${fixture.file} (${fixture.name}): caught up, as served`, () => {
    assert.deepEqual(fold(fixture, 'served'), fixture.served_messages || fixture.messages);
  });
}

// ------------------------------------------------------------------ the fold itself

const id = (n) => `0190f7a2-5b1c-7000-8000-${n.toString(16).padStart(12, '0')}`;
const ev = (n, type, user, data) => ({ id: id(n), type, time: `2026-03-01T12:00:${String(n).padStart(2, '0')}Z`, data: { ...data, user } });
const post = (n, user, text) => ev(n, 'chat.message.posted', user, { text, mentions: [] });
const edit = (n, user, of, text) => ev(n, 'chat.message.edited', user, { message_id: id(of), text });

test('a change makes a new message object and leaves the old one as it was', () => {
  const m = message({ id: id(1), seq: 1, user: 'ada', text: 'helo' });
  const edited = foldMessage(m, edit(2, 'ada', 1, 'hello'));
  assert.notEqual(edited, m);
  assert.equal(m.text, 'helo');
  assert.equal(edited.text, 'hello');
  assert.ok(Object.isFrozen(edited));
  // An event that changes nothing gives the same object back: nothing to redraw.
  assert.equal(foldMessage(m, edit(3, 'eve', 1, 'hacked')), m);
});

test('a redacted edit (no message named) and an unknown event type change nothing', () => {
  const t = newTimeline();
  applyEvent(t, 1, post(1, 'ada', 'hi'));
  const before = t.byId.get(id(1));
  assert.deepEqual(applyEvent(t, 2, { id: id(2), type: 'chat.message.edited', data: { deleted: true } }), {});
  assert.deepEqual(applyEvent(t, 3, ev(3, 'chat.something.new', 'ada', { message_id: id(1) })), {});
  assert.equal(t.byId.get(id(1)), before);
});

test('a duplicate event id is reported as such (null), whatever its type', () => {
  const t = newTimeline();
  assert.ok(applyEvent(t, 1, ev(1, 'chat.member.joined', 'bob', { member: 'bob' })));
  assert.equal(applyEvent(t, 2, ev(1, 'chat.member.joined', 'bob', { member: 'bob' })), null);
});

test('a change of a message older than the history loaded waits for its page', () => {
  const t = newTimeline();
  // Live: an edit and a reaction of message 5, which the page has not loaded.
  assert.deepEqual(applyEvent(t, 20, edit(20, 'ada', 5, 'fixed')), {});
  assert.deepEqual(applyEvent(t, 21, ev(21, 'chat.reaction.added', 'bob', { message_id: id(5), emoji: '👍' })), {});
  // The older page brings it, as the view had it before those changes.
  const { added } = mergePage(t, [{ id: id(5), seq: 5, user: 'ada', text: 'fxied', time: 't', reactions: {} }]);
  assert.deepEqual(added.map(common), [{
    seq: 5, id: id(5), author: 'ada', text: 'fixed', edited: true, deleted: false, reply_to: null, reactions: { '👍': ['bob'] },
  }]);
  assert.equal(t.byId.get(id(5)), added[0]);
});

test('a message of this page is confirmed by its post, in place of the pending one', () => {
  const t = newTimeline();
  const mine = message({ id: id(9), user: 'ada', text: 'hi', pending: true, local: 1, time: 'now' });
  const later = message({ id: id(8), user: 'ada', text: 'later', pending: true, local: 2, time: 'now' });
  insert(t, mine);
  insert(t, later);
  const { before, after } = applyEvent(t, 3, post(9, 'ada', 'hi'));
  assert.equal(before, mine);
  assert.deepEqual([after.seq, after.pending, after.text], [3, false, 'hi']);
  assert.deepEqual(t.list, [after, later]); // stored ones first, by seq
  // The same post again, at another seq: the first stays.
  assert.equal(applyEvent(t, 4, { ...post(9, 'ada', 'hi'), id: id(9) }), null);
});

test('a history page confirms a pending message and keeps what the page has that is newer', () => {
  const t = newTimeline();
  insert(t, message({ id: id(7), user: 'ada', text: 'hi', pending: true, local: 1, time: 'now' }));
  applyEvent(t, 2, post(2, 'bob', 'hello'));
  applyEvent(t, 3, edit(3, 'bob', 2, 'hello!'));
  const { added, stored } = mergePage(t, [
    { id: id(2), seq: 2, user: 'bob', text: 'hello' }, // older than the timeline's: kept as it is
    { id: id(7), seq: 4, user: 'ada', text: 'hi' },
  ]);
  assert.deepEqual(added, []);
  assert.deepEqual(stored.map((m) => [m.id, m.seq, m.pending]), [[id(7), 4, false]]);
  assert.deepEqual(t.list.map((m) => [m.seq, m.text]), [[2, 'hello!'], [4, 'hi']]);
});

test('a message that gets its seq (an ack) moves to its place', () => {
  const t = newTimeline();
  applyEvent(t, 5, post(5, 'bob', 'five'));
  const mine = message({ id: id(1), user: 'ada', text: 'mine', pending: true, local: 1, time: 'now' });
  insert(t, mine);
  assert.deepEqual(t.list.map((m) => m.seq), [5, null]);
  replace(t, mine, withFields(mine, { seq: 4, pending: false }));
  assert.deepEqual(t.list.map((m) => m.seq), [4, 5]);
});
