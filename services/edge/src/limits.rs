//! The limits of PROTOCOL §4, and the token bucket behind the send rate.

use std::time::{Duration, Instant};

/// Every limit the edge enforces; the defaults are the protocol's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest message text, in characters (Unicode scalar values).
    pub max_text_chars: usize,
    /// Largest WebSocket frame or message, in bytes; over it the connection closes with 1009.
    pub max_frame_bytes: usize,
    /// Sends per connection per second, sustained.
    pub sends_per_second: f64,
    /// Sends per connection in a burst.
    pub send_burst: f64,
    pub max_rooms_per_connection: usize,
    /// WebSocket connections one user may hold on one edge.
    pub max_connections_per_user: usize,
    /// Room events queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Live events held for one room while its catch-up reads the stream.
    pub catch_up_buffer: usize,
    /// Longest a request waits for NATS before answering `unavailable`.
    pub nats_deadline: Duration,
    /// How often a connection says it is still there, per joined room (PROTOCOL: 15 s).
    pub heartbeat: Duration,
    /// How often the edge pings each WebSocket; a peer silent for two periods is dropped.
    pub ping: Duration,
    /// A connection's `typing` frames become at most one `chat.typing.started` per this period.
    pub typing_throttle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            max_frame_bytes: 64 * 1024,
            sends_per_second: 20.0,
            send_burst: 40.0,
            max_rooms_per_connection: 100,
            max_connections_per_user: 20,
            outbound_queue: 1024,
            catch_up_buffer: 10_000,
            nats_deadline: Duration::from_secs(2),
            heartbeat: Duration::from_secs(15),
            typing_throttle: Duration::from_secs(3),
            ping: Duration::from_secs(20),
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(20.0, 40.0);
        bucket.at = start;
        assert_eq!((0..50).filter(|_| bucket.take_at(start)).count(), 40);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| bucket.take_at(later)).count(), 10);
    }
}
