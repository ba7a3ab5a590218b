//! Per-user fan-out: one core NATS subscription on `live.user.<user>` per user with a connection
//! on this edge, shared by all of that user's connections. Notifications become `notification`
//! frames, serialized once; other user events (read markers) are not pushed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chatlog_events::{UserId, subjects};
use futures::StreamExt;

use crate::{
    frames,
    hub::{Kind, Subscriber, deliver_all},
    log::Log,
};

pub struct UserFeeds {
    log: Log,
    feeds: Mutex<HashMap<UserId, Arc<UserFeed>>>,
}

struct UserFeed {
    user: UserId,
    subscribers: Mutex<Vec<Subscriber>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl UserFeeds {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            feeds: Mutex::new(HashMap::new()),
        }
    }

    /// Pushes `user`'s notifications to `sub` until [`UserFeeds::unsubscribe`].
    pub fn subscribe(&self, user: &UserId, sub: Subscriber) {
        let mut feeds = lock(&self.feeds);
        let feed = feeds.entry(user.clone()).or_insert_with(|| {
            let feed = Arc::new(UserFeed {
                user: user.clone(),
                subscribers: Mutex::new(Vec::new()),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(run(feed.clone(), self.log.clone()));
            *lock(&feed.task) = Some(task.abort_handle());
            feed
        });
        lock(&feed.subscribers).push(sub);
    }

    /// How many connections `user` has on this edge.
    pub fn connections(&self, user: &UserId) -> usize {
        lock(&self.feeds)
            .get(user)
            .map_or(0, |feed| lock(&feed.subscribers).len())
    }

    pub fn unsubscribe(&self, user: &UserId, join: u64) {
        let mut feeds = lock(&self.feeds);
        let Some(feed) = feeds.get(user).cloned() else {
            return;
        };
        let mut subscribers = lock(&feed.subscribers);
        subscribers.retain(|s| s.join != join);
        if subscribers.is_empty() {
            drop(subscribers);
            feeds.remove(user);
            if let Some(task) = lock(&feed.task).take() {
                task.abort();
            }
        }
    }
}

async fn run(feed: Arc<UserFeed>, log: Log) {
    // Subscribing can only fail when the connection is closed for good; the core client
    // resubscribes by itself after a reconnect.
    let mut live = match log
        .client()
        .subscribe(subjects::live_user(&feed.user))
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(user = %feed.user, error = %e, "subscribing to notifications failed");
            return;
        }
    };
    while let Some(msg) = live.next().await {
        if !is_notification(&msg.payload) {
            continue;
        }
        let Some(frame) = frames::notification_frame(&msg.payload) else {
            continue;
        };
        let mut subscribers = lock(&feed.subscribers);
        deliver_all(&feed.user, &mut subscribers, 0, &frame, Kind::Notification);
    }
}

fn is_notification(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow)]
        ty: &'a str,
    }
    serde_json::from_slice::<TypeOnly>(body).is_ok_and(|t| t.ty == "chat.notification.created")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
