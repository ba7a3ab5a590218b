//! The views chatlog keeps, listed once: `chatlog up`, `chatlog handler`, `chatlog views
//! rebuild` and the edge's test app all run them from here, so a new view is added in one place.

use std::{future::Future, sync::Arc};

use chatlog_events::queries::ChecksumAnswer;
use chatlog_runtime::{HostConfig, HostError, HostStats, Projection};

/// A view: one projection with its own directory and query service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// Messages and rooms (`CHAT_ROOMS`).
    History,
    /// Who is online and typing (`CHAT_PRESENCE`).
    Presence,
    /// Mentions of members become notifications (`CHAT_ROOMS`).
    Mentions,
    /// Each user's notifications and read markers (`CHAT_USERS`).
    Notifications,
}

impl View {
    pub const ALL: [View; 4] = [
        View::History,
        View::Presence,
        View::Mentions,
        View::Notifications,
    ];

    /// Its name: its directory, its service (`views.<name>.*`), its metrics label.
    pub fn name(self) -> &'static str {
        match self {
            View::History => chatlog_history::History.name(),
            View::Presence => chatlog_presence::Presence::default().name(),
            View::Mentions => chatlog_notifications::Mentions.name(),
            View::Notifications => chatlog_notifications::Notifications.name(),
        }
    }

    /// The stream it projects.
    pub fn stream(self) -> chatlog_events::Stream {
        match self {
            View::History => chatlog_history::History.stream(),
            View::Presence => chatlog_presence::Presence::default().stream(),
            View::Mentions => chatlog_notifications::Mentions.stream(),
            View::Notifications => chatlog_notifications::Notifications.stream(),
        }
    }

    /// Keeps the view up to date and answers its queries until `shutdown`
    /// ([`chatlog_runtime::run`]). `presence` is the presence view's timing.
    pub async fn run(
        self,
        presence: chatlog_presence::Presence,
        client: async_nats::Client,
        config: HostConfig,
        stats: Arc<HostStats>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), HostError> {
        use chatlog_runtime::run;
        match self {
            View::History => run(chatlog_history::History, client, config, stats, shutdown).await,
            View::Presence => run(presence, client, config, stats, shutdown).await,
            View::Mentions => {
                run(
                    chatlog_notifications::Mentions,
                    client,
                    config,
                    stats,
                    shutdown,
                )
                .await
            }
            View::Notifications => {
                let projection = chatlog_notifications::Notifications;
                run(projection, client, config, stats, shutdown).await
            }
        }
    }

    /// Wipes the view and applies the stream up to its last sequence now
    /// ([`chatlog_runtime::rebuild`]).
    pub async fn rebuild(
        self,
        presence: chatlog_presence::Presence,
        client: async_nats::Client,
        config: &HostConfig,
        progress: impl FnMut(u64, u64),
    ) -> Result<ChecksumAnswer, HostError> {
        use chatlog_runtime::rebuild;
        match self {
            View::History => rebuild(&chatlog_history::History, client, config, progress).await,
            View::Presence => rebuild(&presence, client, config, progress).await,
            View::Mentions => {
                rebuild(&chatlog_notifications::Mentions, client, config, progress).await
            }
            View::Notifications => {
                rebuild(
                    &chatlog_notifications::Notifications,
                    client,
                    config,
                    progress,
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_has_its_own_name() {
        let names: std::collections::BTreeSet<_> = View::ALL.iter().map(|v| v.name()).collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["history", "mentions", "notifications", "presence"]
        );
    }
}
