//! What one connection has joined, and which frames it writes next: a synchronous state machine
//! with no I/O, driven by the connection's loop ([`super::connection`]).
//!
//! Per joined room a session keeps the last seq it wrote and a phase. A join with `since` below
//! the room's head starts in `CatchingUp`: stored events of the catch-up are written as they
//! come, live events wait in a bounded buffer, and once the catch-up reached the head the
//! buffer is drained. In every phase a room event is written only if its seq is above the last
//! one written, so the stored read and the live feed (each gapless) together give every seq
//! once: no duplicate, no gap.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use chatlog_events::RoomId;

use crate::hub::{Delivery, Kind};

/// The per-connection state, generic over the handle of a running catch-up (so that leaving a
/// room can stop its reader; unit tests use `()`).
pub struct Session<R> {
    rooms: HashMap<RoomId, Joined<R>>,
    /// Join id → room, for deliveries and catch-up answers (which name the join, not the room).
    joins: HashMap<u64, RoomId>,
    /// Live events one catch-up may hold back before the connection counts as too slow.
    max_buffer: usize,
}

struct Joined<R> {
    join: u64,
    /// The last seq written to this client in this room.
    written: u64,
    phase: Phase<R>,
    /// When this connection last said it started typing here (typing events are throttled).
    typing_since: Option<Instant>,
}

enum Phase<R> {
    /// Reading the stream up to the head; live events wait in `buffer`.
    CatchingUp {
        buffer: VecDeque<Delivery>,
        reader: R,
    },
    Live,
}

/// A room the session no longer has: the connection stops its reader, if any, and leaves the
/// room's feed.
#[derive(Debug)]
pub struct Left<R> {
    pub room: RoomId,
    pub join: u64,
    pub reader: Option<R>,
}

/// What to do with a delivery from the feeds.
#[derive(Debug)]
pub enum Step<R> {
    /// Nothing: already written, for a join that ended, or held back until caught up.
    Skip,
    Write(Utf8Bytes),
    /// The user was removed from the room: the session left it; write the frame.
    Removed(Left<R>, Utf8Bytes),
    /// The catch-up buffer is full: the client does not keep up.
    TooSlow,
}

/// A typing flag to append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    Started,
    Stopped,
}

impl<R> Session<R> {
    pub fn new(max_buffer: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            joins: HashMap::new(),
            max_buffer,
        }
    }

    pub fn is_joined(&self, room: &RoomId) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The joined rooms, sorted (one heartbeat names them all).
    pub fn rooms(&self) -> Vec<RoomId> {
        let mut rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        rooms.sort();
        rooms
    }

    /// Records join `join` of `room`, subscribed to its feed at `head`. With `since` below the
    /// head, `catch_up(since)` starts reading `(since, head]` and the room waits for it.
    pub fn joined(
        &mut self,
        room: RoomId,
        join: u64,
        since: Option<u64>,
        head: u64,
        catch_up: impl FnOnce(u64) -> R,
    ) {
        let phase = match since {
            Some(since) if since < head => Phase::CatchingUp {
                buffer: VecDeque::new(),
                reader: catch_up(since),
            },
            _ => Phase::Live,
        };
        self.joins.insert(join, room.clone());
        self.rooms.insert(
            room,
            Joined {
                join,
                written: since.unwrap_or(head),
                phase,
                typing_since: None,
            },
        );
    }

    pub fn leave(&mut self, room: &RoomId) -> Option<Left<R>> {
        let joined = self.rooms.remove(room)?;
        self.joins.remove(&joined.join);
        let reader = match joined.phase {
            Phase::CatchingUp { reader, .. } => Some(reader),
            Phase::Live => None,
        };
        Some(Left {
            room: room.clone(),
            join: joined.join,
            reader,
        })
    }

    /// Leaves every room (the connection is closing).
    pub fn leave_all(&mut self) -> Vec<Left<R>> {
        self.rooms()
            .iter()
            .filter_map(|room| self.leave(room))
            .collect()
    }

    /// Whether join `join` still lasts (a presence answer is written only while it does).
    pub fn is_current(&self, join: u64) -> bool {
        self.joined_mut_ref(join).is_some()
    }

    /// A delivery from the room's feed or the user's notifications.
    pub fn deliver(&mut self, delivery: Delivery) -> Step<R> {
        match delivery.kind {
            Kind::Event => {}
            Kind::Notification => return Step::Write(delivery.frame),
            Kind::Presence if self.joins.contains_key(&delivery.join) => {
                return Step::Write(delivery.frame);
            }
            Kind::Presence => return Step::Skip,
            Kind::Removed => {
                // Removed from the room (on every edge, by the feed): out at once, told why.
                let Some(room) = self.joins.get(&delivery.join).cloned() else {
                    return Step::Skip;
                };
                return match self.leave(&room) {
                    Some(left) => Step::Removed(left, delivery.frame),
                    None => Step::Skip,
                };
            }
        }
        let max_buffer = self.max_buffer;
        let Some(joined) = self.joined_mut(delivery.join) else {
            return Step::Skip; // left since
        };
        match &mut joined.phase {
            Phase::CatchingUp { buffer, .. } => {
                if buffer.len() >= max_buffer {
                    return Step::TooSlow;
                }
                buffer.push_back(delivery);
                Step::Skip
            }
            Phase::Live => joined.write(delivery.seq, delivery.frame),
        }
    }

    /// One stored event of join `join`'s catch-up.
    pub fn caught_up_to(&mut self, join: u64, seq: u64, frame: Utf8Bytes) -> Option<Utf8Bytes> {
        match self.joined_mut(join)?.write(seq, frame) {
            Step::Write(frame) => Some(frame),
            _ => None,
        }
    }

    /// The catch-up of `join` reached its head: the room goes live, and what the feed held back
    /// meanwhile is written, skipping what the catch-up already wrote.
    pub fn caught_up(&mut self, join: u64) -> Vec<Utf8Bytes> {
        let Some(joined) = self.joined_mut(join) else {
            return Vec::new();
        };
        let buffer = match std::mem::replace(&mut joined.phase, Phase::Live) {
            Phase::CatchingUp { buffer, .. } => buffer,
            Phase::Live => VecDeque::new(),
        };
        buffer
            .into_iter()
            .filter_map(|d| match joined.write(d.seq, d.frame) {
                Step::Write(frame) => Some(frame),
                _ => None,
            })
            .collect()
    }

    /// The catch-up of `join` failed: the room is left (the client is told and may rejoin).
    pub fn catch_up_failed(&mut self, join: u64) -> Option<Left<R>> {
        let room = self.joins.get(&join)?.clone();
        self.leave(&room)
    }

    /// A `typing` frame: a start is passed on at most once per `throttle` per room, a stop only
    /// after a start. `None` when the room is not joined.
    pub fn typing(
        &mut self,
        room: &RoomId,
        active: bool,
        now: Instant,
        throttle: Duration,
    ) -> Option<Option<Typing>> {
        let joined = self.rooms.get_mut(room)?;
        Some(match (active, joined.typing_since) {
            (true, Some(since)) if now.duration_since(since) < throttle => None,
            (true, _) => {
                joined.typing_since = Some(now);
                Some(Typing::Started)
            }
            (false, Some(_)) => {
                joined.typing_since = None;
                Some(Typing::Stopped)
            }
            (false, None) => None,
        })
    }

    fn joined_mut(&mut self, join: u64) -> Option<&mut Joined<R>> {
        let room = self.joins.get(&join)?;
        self.rooms.get_mut(room).filter(|j| j.join == join)
    }

    fn joined_mut_ref(&self, join: u64) -> Option<&Joined<R>> {
        let room = self.joins.get(&join)?;
        self.rooms.get(room).filter(|j| j.join == join)
    }
}

impl<R> Joined<R> {
    /// Writes `seq` unless it was written already.
    fn write(&mut self, seq: u64, frame: Utf8Bytes) -> Step<R> {
        if seq <= self.written {
            return Step::Skip;
        }
        self.written = seq;
        Step::Write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    fn frame(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_string())
    }

    fn event(join: u64, seq: u64) -> Delivery {
        Delivery {
            join,
            seq,
            frame: frame(&format!("event {seq}")),
            kind: Kind::Event,
        }
    }

    fn other(join: u64, kind: Kind, text: &str) -> Delivery {
        Delivery {
            join,
            seq: 0,
            frame: frame(text),
            kind,
        }
    }

    fn written(step: Step<()>) -> Option<String> {
        match step {
            Step::Write(f) => Some(f.to_string()),
            Step::Skip => None,
            Step::Removed(..) => Some("removed".into()),
            Step::TooSlow => Some("too slow".into()),
        }
    }

    fn texts(frames: Vec<Utf8Bytes>) -> Vec<String> {
        frames.into_iter().map(|f| f.to_string()).collect()
    }

    /// A session joined to `lobby` as join 1 at `head`, catching up from `since` if given.
    fn joined(since: Option<u64>, head: u64) -> (Session<()>, Vec<u64>) {
        let mut session = Session::new(4);
        let mut started = Vec::new();
        session.joined(room("lobby"), 1, since, head, |from| started.push(from));
        (session, started)
    }

    #[test]
    fn a_join_without_since_is_live_from_the_head() {
        let (mut s, started) = joined(None, 10);
        assert!(started.is_empty(), "no catch-up without since");
        assert_eq!(
            written(s.deliver(event(1, 10))),
            None,
            "the head was before the join"
        );
        assert_eq!(
            written(s.deliver(event(1, 11))).as_deref(),
            Some("event 11")
        );
    }

    #[test]
    fn a_join_at_the_head_needs_no_catch_up() {
        let (mut s, started) = joined(Some(10), 10);
        assert!(started.is_empty());
        assert_eq!(
            written(s.deliver(event(1, 11))).as_deref(),
            Some("event 11")
        );
    }

    #[test]
    fn a_join_with_since_catches_up_then_goes_live_without_gap_or_duplicate() {
        let (mut s, started) = joined(Some(3), 6);
        assert_eq!(started, [3], "reads from since");
        // Live events while catching up wait, including ones the catch-up will also read.
        for seq in [6, 7, 8] {
            assert_eq!(written(s.deliver(event(1, seq))), None);
        }
        let mut out = Vec::new();
        for seq in 4..=6 {
            out.extend(s.caught_up_to(1, seq, frame(&format!("event {seq}"))));
        }
        out.extend(s.caught_up(1));
        assert_eq!(
            texts(out),
            ["event 4", "event 5", "event 6", "event 7", "event 8"]
        );
        assert_eq!(written(s.deliver(event(1, 9))).as_deref(), Some("event 9"));
    }

    #[test]
    fn a_seq_written_once_is_never_written_again() {
        let (mut s, _) = joined(None, 5);
        assert!(written(s.deliver(event(1, 6))).is_some());
        assert_eq!(written(s.deliver(event(1, 6))), None);
        assert_eq!(written(s.deliver(event(1, 4))), None);
        let (mut s, _) = joined(Some(2), 5);
        assert!(s.caught_up_to(1, 3, frame("event 3")).is_some());
        assert!(s.caught_up_to(1, 3, frame("event 3")).is_none());
    }

    #[test]
    fn what_the_catch_up_does_not_read_comes_from_the_feed_without_a_gap() {
        // The catch-up reads up to the head it was given; what comes after it, from the feed.
        let (mut s, _) = joined(Some(0), 2);
        assert_eq!(written(s.deliver(event(1, 3))), None);
        let mut out: Vec<Utf8Bytes> = (1..=2)
            .filter_map(|seq| s.caught_up_to(1, seq, frame(&format!("event {seq}"))))
            .collect();
        out.extend(s.caught_up(1));
        assert_eq!(texts(out), ["event 1", "event 2", "event 3"]);
    }

    #[test]
    fn a_client_that_falls_too_far_behind_while_catching_up_is_too_slow() {
        let (mut s, _) = joined(Some(0), 100);
        for seq in 101..=104 {
            assert_eq!(written(s.deliver(event(1, seq))), None);
        }
        assert_eq!(
            written(s.deliver(event(1, 105))).as_deref(),
            Some("too slow")
        );
    }

    #[test]
    fn deliveries_and_answers_of_a_join_that_ended_are_dropped() {
        let (mut s, _) = joined(Some(0), 5);
        let left = s.leave(&room("lobby")).unwrap();
        assert_eq!(
            (left.join, left.reader),
            (1, Some(())),
            "its reader is stopped"
        );
        assert_eq!(written(s.deliver(event(1, 6))), None);
        assert_eq!(written(s.deliver(other(1, Kind::Presence, "p"))), None);
        assert!(s.caught_up_to(1, 1, frame("event 1")).is_none());
        assert!(s.caught_up(1).is_empty());
        assert!(!s.is_current(1));
        // Rejoined as join 2: join 1's answers still do not reach it.
        s.joined(room("lobby"), 2, None, 5, |_| ());
        assert!(s.caught_up_to(1, 6, frame("event 6")).is_none());
        assert_eq!(written(s.deliver(event(2, 6))).as_deref(), Some("event 6"));
    }

    #[test]
    fn presence_is_written_while_joined_and_notifications_always() {
        let (mut s, _) = joined(None, 0);
        assert!(s.is_current(1));
        assert_eq!(
            written(s.deliver(other(1, Kind::Presence, "p"))).as_deref(),
            Some("p")
        );
        assert_eq!(written(s.deliver(other(7, Kind::Presence, "q"))), None);
        assert_eq!(
            written(s.deliver(other(0, Kind::Notification, "n"))).as_deref(),
            Some("n")
        );
    }

    #[test]
    fn a_removal_leaves_the_room_and_says_so_once() {
        let (mut s, _) = joined(Some(0), 3);
        match s.deliver(other(1, Kind::Removed, "left")) {
            Step::Removed(left, f) => {
                assert_eq!((left.room, left.reader), (room("lobby"), Some(())));
                assert_eq!(f.as_str(), "left");
            }
            _ => panic!("expected a removal"),
        }
        assert!(!s.is_joined(&room("lobby")));
        assert_eq!(written(s.deliver(other(1, Kind::Removed, "left"))), None);
        assert_eq!(written(s.deliver(event(1, 4))), None);
    }

    #[test]
    fn a_failed_catch_up_leaves_the_room() {
        let (mut s, _) = joined(Some(0), 3);
        let left = s.catch_up_failed(1).unwrap();
        assert_eq!(left.room, room("lobby"));
        assert_eq!(s.room_count(), 0);
        assert!(s.catch_up_failed(1).is_none());
    }

    #[test]
    fn typing_starts_once_per_throttle_and_stops_once() {
        let (mut s, _) = joined(None, 0);
        let lobby = room("lobby");
        let throttle = Duration::from_secs(3);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            s.typing(&lobby, true, at(0), throttle),
            Some(Some(Typing::Started))
        );
        assert_eq!(s.typing(&lobby, true, at(1), throttle), Some(None));
        assert_eq!(
            s.typing(&lobby, true, at(3), throttle),
            Some(Some(Typing::Started))
        );
        assert_eq!(
            s.typing(&lobby, false, at(4), throttle),
            Some(Some(Typing::Stopped))
        );
        assert_eq!(s.typing(&lobby, false, at(5), throttle), Some(None));
        assert_eq!(s.typing(&room("elsewhere"), true, at(5), throttle), None);
    }

    #[test]
    fn leaving_everything_leaves_each_room_once() {
        let mut s: Session<()> = Session::new(4);
        s.joined(room("b"), 2, None, 0, |_| ());
        s.joined(room("a"), 1, None, 0, |_| ());
        assert_eq!(s.rooms(), [room("a"), room("b")]);
        let left: Vec<u64> = s.leave_all().iter().map(|l| l.join).collect();
        assert_eq!(left, [1, 2]);
        assert_eq!(s.room_count(), 0);
        assert!(s.leave_all().is_empty());
    }
}
