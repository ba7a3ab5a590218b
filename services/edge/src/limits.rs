//! The limits of the protocol's limits section, and the token buckets behind the rates: one
//! budget per user (or per account) shared by all of its connections and routes on this edge.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Every limit the edge enforces; the defaults are the protocol's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest message text, in characters (Unicode scalar values).
    pub max_text_chars: usize,
    /// Largest WebSocket frame or message, in bytes; over it the connection closes with 1009.
    pub max_frame_bytes: usize,
    /// Appends per user per second, sustained (send, edit, delete, react, read, member changes;
    /// WebSocket and HTTP together).
    pub sends_per_second: f64,
    /// Appends per user in a burst.
    pub send_burst: f64,
    /// `typing`, `join` and `leave` frames per user per second, sustained.
    pub signals_per_second: f64,
    /// `typing`, `join` and `leave` frames per user in a burst.
    pub signal_burst: f64,
    /// Rooms one user may create per minute.
    pub rooms_per_minute: f64,
    /// Failed logins per account per minute before its logins are refused for a while.
    pub login_failures_per_minute: f64,
    /// Password hashes computed at once (argon2 is memory-hard by design); more logins wait.
    pub concurrent_hashes: usize,
    pub max_rooms_per_connection: usize,
    /// WebSocket connections one user may hold on one edge.
    pub max_connections_per_user: usize,
    /// WebSocket connections from one client address on one edge.
    pub max_connections_per_address: usize,
    /// Guest logins, registrations and logins per client address per minute, sustained.
    pub auth_per_minute: f64,
    /// ... and in a burst.
    pub auth_burst: f64,
    /// Room events queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Live events held for one room while its catch-up reads the stream.
    pub catch_up_buffer: usize,
    /// Longest a client may take to send a request's head (or to start the next one on a
    /// kept-alive connection) before the connection is closed.
    pub request_head: Duration,
    /// Longest a request's body may take to arrive.
    pub request_body: Duration,
    /// Longest a request waits for NATS before answering `unavailable`.
    pub nats_deadline: Duration,
    /// How often a connection says it is still there, per joined room (docs/protocol.md §3: 15 s).
    pub heartbeat: Duration,
    /// How often the edge pings each WebSocket; a peer silent for two periods is dropped.
    pub ping: Duration,
    /// A connection's `typing` frames become at most one `chat.typing.started` per this period.
    pub typing_throttle: Duration,
    /// Largest file one upload may store, in bytes (docs/protocol.md §10: 25 MiB).
    pub max_file_bytes: u64,
    /// File bytes one user may upload per UTC day on one edge (§10: 200 MiB).
    pub file_quota_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            max_frame_bytes: 64 * 1024,
            sends_per_second: 20.0,
            send_burst: 40.0,
            signals_per_second: 10.0,
            signal_burst: 20.0,
            rooms_per_minute: 10.0,
            login_failures_per_minute: 5.0,
            concurrent_hashes: 2,
            max_rooms_per_connection: 100,
            max_connections_per_user: 20,
            max_connections_per_address: 200,
            auth_per_minute: 10.0,
            auth_burst: 20.0,
            outbound_queue: 1024,
            catch_up_buffer: 10_000,
            nats_deadline: Duration::from_secs(2),
            request_head: Duration::from_secs(10),
            request_body: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            typing_throttle: Duration::from_secs(3),
            ping: Duration::from_secs(20),
            max_file_bytes: 25 * 1024 * 1024,
            file_quota_bytes: 200 * 1024 * 1024,
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
        Self::new_at(rate, burst, Instant::now())
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// How long until a token is there (zero when one is).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }

    fn full(&self) -> bool {
        self.tokens >= self.burst
    }
}

/// One token bucket per key (a user, an account), shared by every connection and route of that
/// key on this edge. Keys whose bucket refilled are forgotten now and then, so the map holds only
/// those who acted recently.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<K, TokenBucket>>,
}

/// Past this many keys, a take first forgets the keys whose buckets are full again.
const FORGET_PAST: usize = 4096;

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `rate` tokens a second, at most `burst` saved up, per key.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of `key`'s tokens, or says how long until there is one.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= FORGET_PAST && !map.contains_key(key) {
            map.retain(|_, bucket| {
                bucket.refill(now);
                !bucket.full()
            });
        }
        let bucket = map
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new_at(self.rate, self.burst, now));
        if bucket.take_at(now) {
            Ok(())
        } else {
            Err(bucket.wait().max(Duration::from_millis(1)))
        }
    }

    /// Whether `key` has a token now, without taking it (how long until it has, if not).
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some(bucket) => {
                bucket.refill(now);
                match bucket.wait() {
                    Duration::ZERO => Ok(()),
                    wait => Err(wait),
                }
            }
            None => Ok(()),
        }
    }
}

impl TokenBucket {
    fn new_at(rate: f64, burst: f64, at: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at,
        }
    }
}

/// Connections held (or being opened) per key: counted and checked under one lock, so sockets
/// opened at once cannot all pass the check before any is counted.
#[derive(Debug)]
pub struct Seats<K: Hash + Eq> {
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq> Default for Seats<K> {
    fn default() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
        }
    }
}

/// One connection's seat, from the upgrade's check until the connection ends (or the upgrade
/// fails): dropping it frees the seat.
#[derive(Debug)]
pub struct Seat<K: Hash + Eq> {
    seats: Arc<Seats<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Seats<K> {
    /// A seat for one more connection of `key`, unless it holds `max` already.
    pub fn reserve(self: &Arc<Self>, key: &K, max: usize) -> Option<Seat<K>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Seat {
            seats: self.clone(),
            key: key.clone(),
        })
    }
}

impl<K: Hash + Eq> Drop for Seat<K> {
    fn drop(&mut self) {
        let mut held = self.seats.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// An address block (`10.0.0.0/8`, `::1/128`, or one address), for trusted proxies and the
/// addresses exempt from the per-address limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("bad address in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix in {s:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Bytes per key per UTC day (the file uploads' quota): counted as they arrive, refused past the
/// day's allowance until the next day. Keys of earlier days are forgotten now and then.
#[derive(Debug)]
pub struct DailyBytes<K> {
    allowance: u64,
    /// Per key: the day (days since the epoch) and the bytes taken that day.
    map: Mutex<HashMap<K, (u64, u64)>>,
}

const DAY_SECS: u64 = 24 * 3600;

impl<K: Hash + Eq + Clone> DailyBytes<K> {
    pub fn new(allowance: u64) -> Self {
        Self {
            allowance,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` of `key`'s bytes for today, or (taking none) says how long until tomorrow.
    pub fn take(&self, key: &K, n: u64) -> Result<(), Duration> {
        self.take_at(key, n, unix_secs())
    }

    /// Whether `n` more bytes would fit today, taking nothing.
    pub fn check(&self, key: &K, n: u64) -> Result<(), Duration> {
        let now = unix_secs();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let used = map
            .get(key)
            .filter(|(day, _)| *day == now / DAY_SECS)
            .map_or(0, |(_, used)| *used);
        if used.saturating_add(n) > self.allowance {
            return Err(until_tomorrow(now));
        }
        Ok(())
    }

    fn take_at(&self, key: &K, n: u64, now: u64) -> Result<(), Duration> {
        let today = now / DAY_SECS;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= FORGET_PAST && !map.contains_key(key) {
            map.retain(|_, (day, _)| *day == today);
        }
        let (day, used) = map.entry(key.clone()).or_insert((today, 0));
        if *day != today {
            (*day, *used) = (today, 0);
        }
        if used.saturating_add(n) > self.allowance {
            return Err(until_tomorrow(now));
        }
        *used += n;
        Ok(())
    }
}

fn until_tomorrow(now: u64) -> Duration {
    Duration::from_secs(DAY_SECS - now % DAY_SECS)
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Takes one of `user`'s appends (`rate_limited` with when to come back, beyond the budget).
pub fn take_append(
    state: &crate::AppState,
    user: &chatlog_events::UserId,
) -> Result<(), crate::error::ApiError> {
    state
        .budgets
        .appends
        .take(user)
        .map_err(|wait| crate::error::ApiError::rate_limited("too many writes, slow down", wait))
}

/// The per-user budgets of one edge.
#[derive(Debug)]
pub struct Budgets {
    /// Appends of every kind, WebSocket and HTTP together.
    pub appends: Buckets<chatlog_events::UserId>,
    /// `typing`, `join`, `leave`.
    pub signals: Buckets<chatlog_events::UserId>,
    /// `POST /api/rooms`.
    pub room_creates: Buckets<chatlog_events::UserId>,
    /// Failed logins, per account.
    pub login_failures: Buckets<chatlog_events::UserId>,
    /// Guest logins, registrations and logins, per client address.
    pub auth_by_address: Buckets<IpAddr>,
    /// WebSocket connections per user.
    pub user_seats: Arc<Seats<chatlog_events::UserId>>,
    /// WebSocket connections per client address.
    pub address_seats: Arc<Seats<IpAddr>>,
    /// File bytes uploaded per user today.
    pub file_bytes: DailyBytes<chatlog_events::UserId>,
}

impl Budgets {
    pub fn new(limits: &Limits) -> Self {
        let per_minute = |n: f64| (n / 60.0, n);
        let (rooms_rate, rooms_burst) = per_minute(limits.rooms_per_minute);
        let (fail_rate, fail_burst) = per_minute(limits.login_failures_per_minute);
        Self {
            appends: Buckets::new(limits.sends_per_second, limits.send_burst),
            signals: Buckets::new(limits.signals_per_second, limits.signal_burst),
            room_creates: Buckets::new(rooms_rate, rooms_burst),
            login_failures: Buckets::new(fail_rate, fail_burst),
            auth_by_address: Buckets::new(limits.auth_per_minute / 60.0, limits.auth_burst),
            user_seats: Arc::default(),
            address_seats: Arc::default(),
            file_bytes: DailyBytes::new(limits.file_quota_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_budget_serves_a_key_wherever_it_asks_from_and_says_when_to_come_back() {
        let start = Instant::now();
        let buckets = Buckets::new(20.0, 40.0);
        let (ada, bob) = ("ada".to_string(), "bob".to_string());
        // Forty from "twenty sockets" of ada's: one bucket, whoever takes.
        assert_eq!(
            (0..50)
                .filter(|_| buckets.take_at(&ada, start).is_ok())
                .count(),
            40
        );
        let wait = buckets.take_at(&ada, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(40) && wait <= Duration::from_millis(50),
            "{wait:?}"
        );
        // bob's budget is his own.
        assert!(buckets.take_at(&bob, start).is_ok());
        let later = start + Duration::from_millis(500);
        assert_eq!(
            (0..50)
                .filter(|_| buckets.take_at(&ada, later).is_ok())
                .count(),
            10
        );
    }

    #[test]
    fn keys_whose_budget_refilled_are_forgotten() {
        let start = Instant::now();
        let buckets = Buckets::new(1.0, 1.0);
        for n in 0..FORGET_PAST {
            assert!(buckets.take_at(&n, start).is_ok());
        }
        let later = start + Duration::from_secs(2);
        assert!(buckets.take_at(&FORGET_PAST, later).is_ok());
        assert_eq!(buckets.map.lock().unwrap().len(), 1);
    }

    #[test]
    fn address_blocks_contain_what_they_say() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_daily_allowance_is_refused_past_until_the_next_day() {
        let quota = DailyBytes::new(100);
        let day = 20_000 * DAY_SECS;
        assert!(quota.take_at(&"ada", 60, day + 10).is_ok());
        assert!(quota.take_at(&"ada", 40, day + 20).is_ok());
        // Refused with the time to midnight, and nothing taken.
        assert_eq!(
            quota.take_at(&"ada", 1, day + DAY_SECS - 5),
            Err(Duration::from_secs(5))
        );
        assert!(quota.take_at(&"bob", 100, day + 30).is_ok(), "bob's own");
        assert!(
            quota.take_at(&"ada", 100, day + DAY_SECS).is_ok(),
            "a new day"
        );
    }

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
