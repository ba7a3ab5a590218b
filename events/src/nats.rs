//! How every chatlog component reads a NATS URL: one URL or a comma-separated list of a
//! cluster's, with the user and password the first one embeds (`nats://user:password@host:4222`).
//! async-nats 0.51 does not read credentials from the URL itself. No connection is made here.
//! Also the one append of an encoded event, which every retrying appender repeats.

use std::time::Duration;

use async_nats::{
    ConnectOptions, ServerAddr,
    jetstream::{self, context::PublishError, publish::PublishAck},
};

use crate::Encoded;

/// One attempt at appending `encoded`: published with its headers, then its ack awaited. A retry
/// carries the same `Nats-Msg-Id`, so JetStream stores the event once.
pub async fn append_once(
    js: &jetstream::Context,
    encoded: &Encoded,
) -> Result<PublishAck, PublishError> {
    js.publish_with_headers(
        encoded.subject.clone(),
        encoded.headers.clone(),
        encoded.body.clone(),
    )
    .await?
    .await
}

/// The pause before the next attempt after `pause`: doubling, at most 2 s.
pub fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(Duration::from_secs(2))
}

/// The pause before a second attempt.
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// Connect options carrying the URL's credentials, and the parsed addresses to connect to.
pub fn connect_options(urls: &str) -> Result<(ConnectOptions, Vec<ServerAddr>), async_nats::Error> {
    let addrs = urls
        .split(',')
        .map(|u| u.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let options = match addrs.first().map(|a| (a.username(), a.password())) {
        Some((Some(user), Some(password))) => {
            ConnectOptions::with_user_and_password(user.into(), password.into())
        }
        _ => ConnectOptions::new(),
    };
    Ok((options, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_one_url_or_a_list() {
        let (_, addrs) = connect_options("nats://edge:secret@127.0.0.1:4222").unwrap();
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].username(), Some("edge"));
        assert_eq!(addrs[0].password(), Some("secret"));
        let (_, addrs) =
            connect_options("nats://127.0.0.1:4231, nats://127.0.0.1:4232,nats://127.0.0.1:4233")
                .unwrap();
        assert_eq!(
            addrs.iter().map(|a| a.port()).collect::<Vec<_>>(),
            [4231, 4232, 4233]
        );
        assert!(connect_options("nats://[bad").is_err());
    }
}
