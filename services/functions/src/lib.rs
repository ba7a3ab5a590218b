//! `chatlog-functions`: serverless hooks on the log (docs/protocol.md §9).
//!
//! An operator registers a function (a name, an HTTP URL, a filter and a secret) as an event on
//! `CHAT_FUNCTIONS` ([`registry`]). The runtime ([`run`]) follows that stream; for each function
//! it keeps a durable JetStream consumer ([`worker`]) and delivers every matching event, in log
//! order per subject, as a signed binary-mode CloudEvent over HTTP ([`delivery`], [`signature`]),
//! with retries, then `CHAT_DEAD`. What a function answers is validated like a client's message
//! and appended as the function's ([`answer`]).

pub mod answer;
pub mod delivery;
pub mod registry;
pub mod signature;
pub mod stats;
mod worker;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chatlog_events::{
    Stream,
    functions::{FunctionName, Record, Source, all_subjects},
};
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};

pub use registry::{Function, Registry};
pub use stats::Stats;

use crate::{
    delivery::{Rooms, Shared, Target},
    registry::Applied,
    worker::{Running, Worker},
};

/// How the runtime calls functions.
#[derive(Debug, Clone)]
pub struct Config {
    /// Calls per event before it goes to `CHAT_DEAD`.
    pub tries: u32,
    /// The pause after the first failed call, doubled after each (with jitter) up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// One call, answer read included.
    pub timeout: Duration,
    /// Calls in flight per function.
    pub max_in_flight: usize,
    /// Events in hand per function (unacknowledged: being delivered or queued behind their
    /// subject's).
    pub max_pending: usize,
    /// The most of an answer read; a longer one is rejected.
    pub max_answer_bytes: usize,
    /// How long an event in hand stays unacknowledged before JetStream gives it again (the
    /// runtime says it is still at work every third of it): what a crashed runtime's events wait.
    pub ack_wait: Duration,
    /// How long a replica that stopped pulling keeps a function's events: what a crashed
    /// runtime's functions wait before another replica takes them. Longer than `ack_wait`, so
    /// that what the crashed one held comes back before anything newer.
    pub pin_timeout: Duration,
    /// This replica's name in the stats.
    pub replica: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tries: 10,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_in_flight: 16,
            max_pending: 1000,
            max_answer_bytes: 1 << 20,
            ack_wait: Duration::from_secs(30),
            pin_timeout: Duration::from_secs(40),
            replica: format!("pid-{}", std::process::id()),
        }
    }
}

/// The runtime could not start or go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

fn error(what: &str) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> Error + '_ {
    move |e| Error(format!("{what}: {e}"))
}

/// Runs every registered function until `stop`: follows `CHAT_FUNCTIONS`, starts, changes and
/// stops each function's worker as the registry says, answers [`stats::SUBJECT`].
pub async fn run(
    client: async_nats::Client,
    config: Config,
    stats: Stats,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let js = jetstream::new(client.clone());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        .build()
        .map_err(|e| Error(format!("the HTTP client: {e}")))?;
    let replica = config.replica.clone();
    let shared = Arc::new(Shared {
        js: js.clone(),
        http,
        config,
        rooms: Rooms::default(),
    });
    let mut answering = client
        .subscribe(stats::SUBJECT)
        .await
        .map_err(|e| error("subscribing to the stats requests")(e.into()))?;
    let mut registry_stream = js
        .get_stream(Stream::Functions.name())
        .await
        .map_err(|e| error("reading CHAT_FUNCTIONS")(e.into()))?;
    let head = registry_stream
        .info()
        .await
        .map_err(|e| error("reading CHAT_FUNCTIONS")(e.into()))?
        .state
        .last_sequence;
    let mut changes = registry_stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: all_subjects(),
            ..Default::default()
        })
        .await
        .map_err(|e| error("following CHAT_FUNCTIONS")(e.into()))?
        .messages()
        .await
        .map_err(|e| error("following CHAT_FUNCTIONS")(e.into()))?;
    let mut runtime = Runtime {
        shared,
        stats,
        registry: Registry::default(),
        running: HashMap::new(),
    };
    // The workers start once the registry is read to the head it had at start, so a function
    // removed meanwhile never runs.
    let mut caught_up = head == 0;
    if caught_up {
        runtime.caught_up().await;
    }
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            () = &mut stop => break Ok(()),
            Some(request) = answering.next() => {
                if let Some(reply) = request.reply {
                    let answer = serde_json::to_vec(&runtime.stats.snapshot(&replica)).unwrap_or_default();
                    let _ = client.publish(reply, answer.into()).await;
                }
            }
            next = changes.next() => match next {
                Some(Ok(message)) => {
                    let Ok(info) = message.info() else { continue };
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    match Record::decode(&message.payload) {
                        Ok(record) => {
                            match runtime.registry.apply(seq, &record) {
                                Applied::Ignored(why) => tracing::warn!(function = %record.name, seq, why, "registry event ignored"),
                                applied => tracing::info!(function = %record.name, seq, ?applied, "registry"),
                            }
                        }
                        Err(e) => tracing::warn!(seq, error = %e, "not a registry event: skipped"),
                    }
                    if !caught_up && (pending == 0 || seq >= head) {
                        caught_up = true;
                        runtime.caught_up().await;
                    } else if caught_up {
                        runtime.reconcile();
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "following the registry"),
                None => break Err(Error("following CHAT_FUNCTIONS ended".into())),
            },
        }
    };
    runtime.stop_all().await;
    let _ = client.flush().await;
    result
}

/// What [`replay_dead`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters the function took (and so removed).
    pub taken: usize,
    /// Dead letters left, from the first it did not take.
    pub left: usize,
    /// Why it did not take that one.
    pub failure: Option<String>,
}

/// `chatlog functions replay-dead`: delivers what `CHAT_DEAD` keeps for `name` again, oldest
/// first, with `config`'s tries; each letter the function takes (its answer stored) is deleted.
/// Stops at the first it does not take, so the rest keep their order. As admin (it deletes).
pub async fn replay_dead(
    client: async_nats::Client,
    config: Config,
    name: &FunctionName,
) -> Result<Replayed, Error> {
    use chatlog_events::functions::{dead_headers, dead_subject};
    let js = jetstream::new(client);
    let registry = registry::load(&js)
        .await
        .map_err(|e| Error(format!("reading the registry: {e}")))?;
    let function = registry
        .get(name)
        .ok_or_else(|| Error(format!("no function {name}")))?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        .build()
        .map_err(|e| Error(format!("the HTTP client: {e}")))?;
    let shared = Shared {
        js: js.clone(),
        http,
        config,
        rooms: Rooms::default(),
    };
    let mut done = Replayed {
        taken: 0,
        left: 0,
        failure: None,
    };
    let dead = js
        .get_stream(Stream::Dead.name())
        .await
        .map_err(|e| error("reading CHAT_DEAD")(e.into()))?;
    if dead
        .direct_get_first_for_subject(dead_subject(name))
        .await
        .is_err()
    {
        return Ok(done);
    }
    let mut letters = dead
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: dead_subject(name),
            ..Default::default()
        })
        .await
        .map_err(|e| error("reading CHAT_DEAD")(e.into()))?
        .messages()
        .await
        .map_err(|e| error("reading CHAT_DEAD")(e.into()))?;
    let (_keep, spec) = watch::channel(Arc::new(function.spec.clone()));
    while let Some(letter) = letters.next().await {
        let letter = letter.map_err(|e| error("reading CHAT_DEAD")(e.into()))?;
        let info = letter.info().map_err(|e| error("reading CHAT_DEAD")(e))?;
        let (at, pending) = (info.stream_sequence, info.pending);
        let header = |h: &str| {
            letter
                .headers
                .as_ref()
                .and_then(|m| m.get(h))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let stream = Stream::ALL
            .into_iter()
            .find(|s| s.name() == header(dead_headers::STREAM))
            .unwrap_or(function.spec.stream.stream());
        let seq = header(dead_headers::SEQ).parse().unwrap_or(0);
        let target = Target {
            name: name.clone(),
            spec: spec.clone(),
            stats: Arc::default(),
            calls: Arc::new(Semaphore::new(1)),
            stream,
        };
        match delivery::try_deliver(&shared, &target, seq, &letter.payload).await {
            Ok(()) => {
                dead.delete_message(at)
                    .await
                    .map_err(|e| error("deleting a dead letter")(e.into()))?;
                done.taken += 1;
            }
            Err((why, _)) => {
                done.left = usize::try_from(pending).unwrap_or(usize::MAX) + 1;
                done.failure = Some(why);
                return Ok(done);
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(done)
}

struct Runtime {
    shared: Arc<Shared>,
    stats: Stats,
    registry: Registry,
    running: HashMap<FunctionName, Running>,
}

impl Drop for Runtime {
    /// Dropped without [`Runtime::stop_all`] (the runtime's future was): the workers go too.
    fn drop(&mut self) {
        for running in self.running.values() {
            running.handle.abort();
        }
    }
}

impl Runtime {
    /// Starts the registry's functions and deletes the consumers of none.
    async fn caught_up(&mut self) {
        tracing::info!(functions = self.registry.len(), "functions registry read");
        self.reconcile();
        self.stats.set_ready();
        let current: Vec<String> = self.registry.iter().map(Function::consumer).collect();
        for source in [Source::Rooms, Source::Users, Source::Presence] {
            let name = source.stream().name();
            let Ok(stream) = self.shared.js.get_stream_no_info(name).await else {
                continue;
            };
            let mut names = stream.consumer_names();
            let mut stale = Vec::new();
            while let Some(Ok(consumer)) = names.next().await {
                if consumer.starts_with(registry::CONSUMER_PREFIX) && !current.contains(&consumer) {
                    stale.push(consumer);
                }
            }
            for consumer in stale {
                tracing::info!(
                    stream = name,
                    consumer,
                    "deleting the consumer of no function"
                );
                let _ = stream.delete_consumer(&consumer).await;
            }
        }
    }

    /// Brings the workers to what the registry says.
    fn reconcile(&mut self) {
        let gone: Vec<FunctionName> = self
            .running
            .iter()
            .filter(|(name, r)| self.registry.get(name).map(|f| f.generation) != Some(r.generation))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let Some(running) = self.running.remove(&name) else {
                continue;
            };
            running.stop.send_replace(true);
            let js = self.shared.js.clone();
            tokio::spawn(async move {
                let _ = running.handle.await;
                if let Ok(stream) = js.get_stream_no_info(running.stream).await {
                    let _ = stream.delete_consumer(&running.consumer).await;
                }
            });
        }
        for function in self.registry.iter() {
            if let Some(running) = self.running.get(&function.name) {
                running.spec.send_if_modified(|spec| {
                    let changed = **spec != function.spec;
                    if changed {
                        *spec = Arc::new(function.spec.clone());
                    }
                    changed
                });
                continue;
            }
            let (spec, spec_rx) = watch::channel(Arc::new(function.spec.clone()));
            let (stop, stopped) = watch::channel(false);
            let target = Arc::new(Target {
                name: function.name.clone(),
                spec: spec_rx,
                stats: self.stats.of(&function.name),
                calls: Arc::new(Semaphore::new(self.shared.config.max_in_flight.max(1))),
                stream: function.spec.stream.stream(),
            });
            let worker = Worker {
                function: function.clone(),
                target,
                shared: self.shared.clone(),
            };
            tracing::info!(function = %function.name, consumer = function.consumer(), "function started");
            self.running.insert(
                function.name.clone(),
                Running {
                    generation: function.generation,
                    stream: function.spec.stream.stream().name(),
                    consumer: function.consumer(),
                    spec,
                    stop,
                    handle: tokio::spawn(worker.run(stopped)),
                },
            );
        }
    }

    /// Stops every worker: each gives back what it held, within a bound.
    async fn stop_all(&mut self) {
        let running: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in &running {
            r.stop.send_replace(true);
        }
        let all = futures::future::join_all(running.into_iter().map(|r| r.handle));
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("functions not stopped within 5 s");
        }
    }
}
