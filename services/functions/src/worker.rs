//! One function's consumer: pulls its events from its durable consumer (pinned to one runtime
//! replica at a time), delivers them in log order per subject and in parallel across subjects,
//! and acknowledges each once delivered or dead-lettered.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull},
};
use chatlog_events::functions::FunctionSpec;
use futures::StreamExt;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    delivery::{self, Shared, Target},
    registry::Function,
};

/// The priority group every replica pulls in: the server pins one puller at a time, so one
/// replica delivers a function's events and per-subject order holds across replicas.
pub const GROUP: &str = "chatlog";

/// How long one pull waits; well below the pin's timeout, which a pull renews.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How long a stopping worker lets the calls under way finish.
const DRAIN: Duration = Duration::from_secs(2);

pub(crate) struct Worker {
    pub function: Function,
    pub target: Arc<Target>,
    pub shared: Arc<Shared>,
}

/// Why the consumer could not be read.
type Error = Box<dyn std::error::Error + Send + Sync>;

impl Worker {
    /// Runs until `stop`, starting over after NATS errors.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut pause = Duration::from_millis(200);
        loop {
            match self.consume(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(function = %self.function.name, error = %e, "consuming failed, starting over");
                }
            }
            tokio::select! {
                () = stopped(&mut stop) => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn consumer_config(&self) -> pull::Config {
        let config = &self.shared.config;
        let since = self.function.since;
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(since.timestamp()) * 1_000_000_000
                + i128::from(since.timestamp_subsec_nanos()),
        )
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        pull::Config {
            durable_name: Some(self.function.consumer()),
            description: Some(format!("chatlog function {}", self.function.name)),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            filter_subject: self.function.spec.subject.clone(),
            max_ack_pending: i64::try_from(config.max_pending).unwrap_or(i64::MAX),
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![GROUP.to_string()],
            priority_timeout: config.pin_timeout,
            ..Default::default()
        }
    }

    async fn consume(&self, stop: &mut watch::Receiver<bool>) -> Result<(), Error> {
        let stream_name = self.function.spec.stream.stream().name();
        let stream = self.shared.js.get_stream_no_info(stream_name).await?;
        let consumer = stream.create_consumer(self.consumer_config()).await?;
        let mut messages = consumer
            .stream()
            .group(GROUP)
            .max_messages_per_batch(self.shared.config.max_pending.clamp(1, 256))
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 3)
            .messages()
            .await?;
        let mut state: Lanes = Lanes::default();
        let mut recovering = Recovering::after(consumer.cached_info(), &self.shared.config);
        let mut tasks: JoinSet<u64> = JoinSet::new();
        let mut progress = tokio::time::interval(self.shared.config.ack_wait / 3);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pinned = false;
        let result = loop {
            tokio::select! {
                biased;
                () = stopped(stop) => break Ok(()),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let seq = match done {
                        Ok(seq) => seq,
                        Err(e) => break Err(format!("a delivery failed: {e}").into()),
                    };
                    if let Some((message, next)) = state.done(seq) {
                        // Lost acks are redelivered after ack_wait, and the answer stored once.
                        if let Err(e) = message.ack().await {
                            tracing::debug!(function = %self.function.name, seq, error = %e, "ack failed");
                        }
                        if let Some((seq, subject, body)) = next {
                            self.spawn(&mut tasks, seq, subject, body);
                        }
                    }
                }
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        pinned = true;
                        let seq = match message.info() {
                            Ok(info) => {
                                self.target.stats.lag.store(info.pending, Relaxed);
                                info.stream_sequence
                            }
                            Err(e) => break Err(e),
                        };
                        let subject = message.subject.to_string();
                        let body = message.payload.clone();
                        if let Some(r) = recovering.as_mut() {
                            let again = r.held.insert(seq, (message, subject, body)).is_some();
                            if seq <= r.high && !again {
                                r.left = r.left.saturating_sub(1);
                            }
                            if r.left == 0 {
                                self.release(recovering.take(), &mut state, &mut tasks);
                            }
                        } else if let Some((seq, subject, body)) = state.take(seq, subject, body, message) {
                            self.spawn(&mut tasks, seq, subject, body);
                        }
                    }
                    Some(Err(e)) => {
                        use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                        match e.kind() {
                            Kind::ConsumerDeleted | Kind::NoResponders | Kind::RequestLimitExceeded => break Err(e.into()),
                            _ => tracing::debug!(function = %self.function.name, error = %e, "pull error"),
                        }
                    }
                    None => break Err("the pull ended".into()),
                },
                () = until(recovering.as_ref().map(|r| r.until)) => {
                    self.release(recovering.take(), &mut state, &mut tasks);
                }
                _ = progress.tick() => {
                    for message in state.in_hand().chain(Recovering::messages(&recovering)) {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        // Asked to stop: the calls under way may finish (briefly), so that a restart sends
        // again as little as it can.
        if result.is_ok() {
            let drain = tokio::time::sleep(DRAIN);
            tokio::pin!(drain);
            while !tasks.is_empty() {
                tokio::select! {
                    () = &mut drain => break,
                    Some(Ok(seq)) = tasks.join_next() => {
                        if let Some((message, _)) = state.done(seq) {
                            let _ = message.ack().await;
                        }
                    }
                }
            }
        }
        tasks.abort_all();
        // What was in hand goes back at once, in order, rather than after ack_wait.
        for message in state.in_hand().chain(Recovering::messages(&recovering)) {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        if pinned && *stop.borrow() {
            // The next replica (or this one, restarted) need not wait for the pin's timeout.
            let name = self.function.consumer();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.unpin_consumer(&name, GROUP))
                    .await;
        }
        result
    }

    /// Takes what was held while recovering, in order.
    fn release(&self, recovering: Option<Recovering>, state: &mut Lanes, tasks: &mut JoinSet<u64>) {
        for (seq, (message, subject, body)) in recovering.into_iter().flat_map(|r| r.held) {
            if let Some((seq, subject, body)) = state.take(seq, subject, body, message) {
                self.spawn(tasks, seq, subject, body);
            }
        }
    }

    fn spawn(&self, tasks: &mut JoinSet<u64>, seq: u64, subject: String, body: bytes::Bytes) {
        let shared = self.shared.clone();
        let target = self.target.clone();
        tasks.spawn(async move {
            delivery::deliver(&shared, &target, seq, &subject, body).await;
            seq
        });
    }
}

/// After a crash JetStream gives back what the crashed runtime held only once its ack_wait ran
/// out (and not in order), but newer events at once: everything is held until the older ones
/// came back (or could have), then taken in order, so that a subject's events still go in order.
struct Recovering {
    /// Every event up to it was delivered before: one that comes now is given again.
    high: u64,
    /// How many are still to come back.
    left: usize,
    until: tokio::time::Instant,
    held: BTreeMap<u64, (jetstream::Message, String, bytes::Bytes)>,
}

impl Recovering {
    /// `None` when nothing was left unacknowledged.
    fn after(info: &jetstream::consumer::Info, config: &crate::Config) -> Option<Recovering> {
        (info.num_ack_pending > 0).then(|| Recovering {
            high: info.delivered.stream_sequence,
            left: info.num_ack_pending,
            until: tokio::time::Instant::now() + config.ack_wait + Duration::from_secs(1),
            held: BTreeMap::new(),
        })
    }

    /// The messages held.
    fn messages(this: &Option<Recovering>) -> Vec<&jetstream::Message> {
        let mut out = Vec::new();
        if let Some(r) = this {
            for (message, _, _) in r.held.values() {
                out.push(message);
            }
        }
        out
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `stop` is set.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The events in hand: by sequence, and queued per subject (the front of a lane is the one
/// being delivered).
struct Lanes<M = jetstream::Message> {
    in_hand: BTreeMap<u64, (M, String, bytes::Bytes)>,
    lanes: HashMap<String, VecDeque<u64>>,
}

impl<M> Default for Lanes<M> {
    fn default() -> Self {
        Self {
            in_hand: BTreeMap::new(),
            lanes: HashMap::new(),
        }
    }
}

type Next = (u64, String, bytes::Bytes);

impl<M> Lanes<M> {
    /// Takes a pulled event; answers it when it is to be delivered now (its lane was empty).
    fn take(&mut self, seq: u64, subject: String, body: bytes::Bytes, message: M) -> Option<Next> {
        if let Some(held) = self.in_hand.get_mut(&seq) {
            // A redelivery of an event in hand: ack through the latest delivery, deliver once.
            held.0 = message;
            return None;
        }
        self.in_hand
            .insert(seq, (message, subject.clone(), body.clone()));
        let lane = self.lanes.entry(subject.clone()).or_default();
        lane.push_back(seq);
        (lane.len() == 1).then_some((seq, subject, body))
    }

    /// The event at `seq` is done: its message to acknowledge, and its lane's next event.
    fn done(&mut self, seq: u64) -> Option<(M, Option<Next>)> {
        let (message, subject, _) = self.in_hand.remove(&seq)?;
        let lane = self.lanes.get_mut(&subject)?;
        lane.pop_front();
        let next = lane.front().and_then(|s| {
            self.in_hand
                .get(s)
                .map(|(_, subj, body)| (*s, subj.clone(), body.clone()))
        });
        if lane.is_empty() {
            self.lanes.remove(&subject);
        }
        Some((message, next))
    }

    fn in_hand(&self) -> impl Iterator<Item = &M> {
        self.in_hand.values().map(|(m, _, _)| m)
    }
}

/// A running function as the runtime keeps it.
pub(crate) struct Running {
    pub generation: u64,
    pub stream: &'static str,
    pub consumer: String,
    pub spec: watch::Sender<Arc<FunctionSpec>>,
    pub stop: watch::Sender<bool>,
    pub handle: tokio::task::JoinHandle<()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(l: &mut Lanes<u32>, seq: u64, subject: &str, delivery: u32) -> Option<u64> {
        l.take(seq, subject.into(), bytes::Bytes::new(), delivery)
            .map(|(s, _, _)| s)
    }

    #[test]
    fn events_of_one_subject_go_one_after_the_other_and_of_others_at_once() {
        let mut l = Lanes::<u32>::default();
        assert_eq!(take(&mut l, 1, "chat.room.a", 0), Some(1));
        assert_eq!(take(&mut l, 2, "chat.room.b", 0), Some(2));
        assert_eq!(take(&mut l, 3, "chat.room.a", 0), None);
        assert_eq!(take(&mut l, 4, "chat.room.a", 0), None);
        let (_, next) = l.done(1).unwrap();
        assert_eq!(next.map(|n| n.0), Some(3));
        let (_, next) = l.done(2).unwrap();
        assert!(next.is_none());
        assert_eq!(take(&mut l, 5, "chat.room.b", 0), Some(5));
        assert_eq!(l.done(3).unwrap().1.map(|n| n.0), Some(4));
        assert!(l.done(4).unwrap().1.is_none());
        assert!(l.done(5).unwrap().1.is_none());
        assert!(l.done(5).is_none());
        assert_eq!(l.in_hand().count(), 0);
        assert!(l.lanes.is_empty());
    }

    #[test]
    fn a_redelivery_of_an_event_in_hand_is_not_delivered_again() {
        let mut l = Lanes::<u32>::default();
        assert_eq!(take(&mut l, 1, "chat.room.a", 1), Some(1));
        assert_eq!(take(&mut l, 1, "chat.room.a", 2), None);
        assert_eq!(l.in_hand().copied().collect::<Vec<_>>(), [2]);
        let (latest, next) = l.done(1).unwrap();
        assert_eq!((latest, next.is_none()), (2, true));
    }
}
