//! Per-user fan-out: one core NATS subscription on `live.user.*` per edge, dispatched to the
//! connections of each user held here (and the edge's registry of its connections). Notifications become `notification`
//! frames, serialized once; other user events (read markers) are not pushed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chatlog_events::{UserId, subjects};
use futures::StreamExt;

use crate::{
    frames,
    hub::{KickReason, Kind, Subscriber, deliver_all},
    log::Log,
};

pub struct UserFeeds {
    /// Every connection on this edge, by user.
    users: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    /// The one `live.user.*` subscription's task.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl UserFeeds {
    /// The registry and its subscription's task (which ends with the registry).
    pub fn start(log: Log) -> Arc<Self> {
        let feeds = Arc::new(Self {
            users: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(Arc::downgrade(&feeds), log));
        *lock(&feeds.task) = Some(task.abort_handle());
        feeds
    }

    /// Pushes `user`'s notifications to `sub` until [`UserFeeds::unsubscribe`].
    pub fn subscribe(&self, user: &UserId, sub: Subscriber) {
        lock(&self.users).entry(user.clone()).or_default().push(sub);
    }

    /// Tells every connection on this edge to close (the edge is shutting down).
    pub fn kick_all(&self, reason: KickReason) {
        for sub in lock(&self.users).values().flatten() {
            sub.kick.kick(reason);
        }
    }

    pub fn unsubscribe(&self, user: &UserId, join: u64) {
        let mut users = lock(&self.users);
        let Some(subscribers) = users.get_mut(user) else {
            return;
        };
        subscribers.retain(|s| s.join != join);
        if subscribers.is_empty() {
            users.remove(user);
        }
    }
}

impl Drop for UserFeeds {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// One subscription to every user's live events for the whole edge, rather than one per user:
/// a subscription per user (its channel and task) would be a large share of an idle connection. The price is that every edge sees every user's events (notifications, read
/// markers) and drops those of users it does not hold, a small stream next to the rooms'.
async fn run(feeds: std::sync::Weak<UserFeeds>, log: Log) {
    let mut backoff = Duration::from_millis(100);
    // Subscribing only fails while the client is closed or not yet connected; the core client
    // resubscribes by itself after a reconnect.
    let mut live = loop {
        match log.client().subscribe(subjects::live_users()).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to user events failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    while let Some(msg) = live.next().await {
        let Some(feeds) = feeds.upgrade() else {
            return;
        };
        let Some(user) = msg
            .subject
            .strip_prefix("live.user.")
            .and_then(|u| UserId::parse(u).ok())
        else {
            continue;
        };
        if !lock(&feeds.users).contains_key(&user) || !is_notification(&msg.payload) {
            continue;
        }
        let Some(frame) = frames::notification_frame(&msg.payload) else {
            continue;
        };
        let mut users = lock(&feeds.users);
        if let Some(subscribers) = users.get_mut(&user) {
            deliver_all(&user, subscribers, 0, &frame, Kind::Notification);
        }
    }
}

fn is_notification(body: &[u8]) -> bool {
    chatlog_events::EventType::of(body) == Some(chatlog_events::EventType::NotificationCreated)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
