//! Periodic ticks finer than tokio's timers. tokio's timer wheel has 1 ms slots, so open-loop
//! senders paced with `tokio::time::interval` at sub-millisecond periods all fire on the same
//! millisecond: at 25 000 sends/s over 16 connections the load went out as a burst of ~25 sends
//! every millisecond, not one every 40 µs, and the ack latency measured was mostly the burst
//! queueing behind itself. A [`Ticker`] is a periodic `timerfd` (a kernel hrtimer) polled by the
//! runtime's reactor; a [`Pacer`] runs one at [`Pacer::GRAIN`] and tells each of many senders,
//! each at its own period and offset, how many sends it owes: the load is even to within the grain
//! without a timer (and a wake-up of the generator) per send.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::Notify, time::Instant};

/// Paces senders: sender `i` is owed a send at `first_i`, `first_i + period_i`, …, counted at each
/// tick of one [`Ticker`]. Runs until every [`Pace`] handle is dropped or `until` passes.
pub struct Pacer;

/// One sender's side of a [`Pacer`].
pub struct Pace {
    owed: Arc<Owed>,
}

#[derive(Default)]
struct Owed {
    sends: AtomicU64,
    ready: Notify,
}

impl Pacer {
    /// The pacer's tick: sends are at most this late (plus the runtime's own lateness).
    pub const GRAIN: Duration = Duration::from_micros(100);

    /// Starts pacing one sender per `(first, period)` until `until`, on the current runtime.
    pub fn start(schedule: &[(Instant, Duration)], until: Instant) -> io::Result<Vec<Pace>> {
        let start = schedule.iter().map(|&(first, _)| first).min();
        let Some(start) = start else {
            return Ok(Vec::new());
        };
        let mut ticker = Ticker::new(start, Self::GRAIN)?;
        let senders: Vec<(Instant, Duration, Arc<Owed>)> = schedule
            .iter()
            .map(|&(first, period)| (first, period, Arc::new(Owed::default())))
            .collect();
        let paces = senders
            .iter()
            .map(|(_, _, owed)| Pace { owed: owed.clone() })
            .collect();
        tokio::spawn(async move {
            // Sends counted so far, per sender.
            let mut counted = vec![0u64; senders.len()];
            loop {
                if ticker.tick().await.is_err() {
                    return;
                }
                let now = Instant::now();
                if now >= until || senders.iter().all(|(_, _, o)| Arc::strong_count(o) == 1) {
                    return;
                }
                for ((first, period, owed), counted) in senders.iter().zip(&mut counted) {
                    let Some(since) = now.checked_duration_since(*first) else {
                        continue;
                    };
                    let due = (since.as_nanos() / period.as_nanos().max(1)) as u64 + 1;
                    if due > *counted {
                        owed.sends.fetch_add(due - *counted, Ordering::Relaxed);
                        *counted = due;
                        owed.ready.notify_one();
                    }
                }
            }
        });
        Ok(paces)
    }
}

impl Pace {
    /// Waits until sends are owed; answers how many (at least 1), now no longer owed.
    pub async fn owed(&self) -> u64 {
        loop {
            let n = self.owed.sends.swap(0, Ordering::Relaxed);
            if n > 0 {
                return n;
            }
            self.owed.ready.notified().await;
        }
    }
}

/// Ticks at `first`, `first + period`, …; a tick that finds several periods passed answers how
/// many (so a late reader catches up, as `MissedTickBehavior::Burst` does).
pub struct Ticker {
    fd: AsyncFd<OwnedFd>,
}

impl Ticker {
    pub fn new(first: Instant, period: Duration) -> io::Result<Self> {
        if period.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a ticker's period must be positive",
            ));
        }
        // SAFETY: timerfd_create takes no pointers; a non-negative answer is a new descriptor
        // owned by nothing else, handed to `OwnedFd` at once.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid descriptor we own (above).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A zero `it_value` disarms the timer: a first tick already due is due in 1 ns.
        let delay = first
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: timespec(period),
            it_value: timespec(delay),
        };
        // SAFETY: `fd` is a timerfd; `spec` outlives the call; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the `AsyncFd` owns `fd`, which nothing replaces or closes while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(Self { fd })
    }

    /// Waits for the next tick; answers the periods passed since the last one (at least 1).
    pub async fn tick(&mut self) -> io::Result<u64> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 that lives through the call.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 && expirations > 0 {
                return Ok(expirations);
            }
            let error = io::Error::last_os_error();
            if n < 0 && error.kind() != io::ErrorKind::WouldBlock {
                return Err(error);
            }
            ready.clear_ready();
        }
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_at_a_period_finer_than_a_millisecond() {
        let period = Duration::from_micros(100);
        // A loaded machine (the test suite runs beside it) may deschedule this thread for
        // milliseconds: one run of the five seeing the periods one by one is the property.
        let mut runs = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let mut ticker = Ticker::new(start + period, period).expect("timerfd");
            let (mut ticks, mut wakes) = (0, 0);
            while ticks < 50 {
                ticks += ticker.tick().await.expect("tick");
                wakes += 1;
            }
            // Every period is counted, none twice.
            let elapsed = start.elapsed();
            assert!(elapsed >= Duration::from_millis(5));
            assert!(
                u128::from(ticks) <= elapsed.as_micros() / 100 + 1,
                "{ticks} in {elapsed:?}"
            );
            // Timers in 1 ms slots would wake at most ~6 times in those 5 ms.
            if wakes > 10 {
                return;
            }
            runs.push((wakes, ticks));
        }
        panic!("no run woke more than 10 times: (wakes, ticks) {runs:?}");
    }

    #[tokio::test]
    async fn a_late_reader_is_told_how_many_periods_passed() {
        let period = Duration::from_millis(1);
        let mut ticker = Ticker::new(Instant::now() + period, period).expect("timerfd");
        // Being late is the case under test: the runtime's only thread blocked for 10 periods.
        std::thread::sleep(Duration::from_millis(10));
        assert!(ticker.tick().await.expect("tick") >= 5);
    }

    #[tokio::test]
    async fn a_pacer_owes_each_sender_its_own_rate() {
        let start = Instant::now() + Duration::from_millis(1);
        let schedule = [
            (start, Duration::from_micros(250)),
            (start + Duration::from_micros(500), Duration::from_millis(1)),
        ];
        let paces = Pacer::start(&schedule, start + Duration::from_secs(5)).expect("pacer");
        let (fast, slow) = (&paces[0], &paces[1]);
        // While the slow sender is owed its first 10 sends, the fast one is owed ~40.
        let (mut f, mut s) = (0, 0);
        while s < 10 {
            tokio::select! {
                n = fast.owed() => f += n,
                n = slow.owed() => s += n,
            }
        }
        let from = start.elapsed();
        assert!(from >= Duration::from_micros(9_500), "{from:?}");
        assert!(
            (36..=44).contains(&f),
            "fast sender owed {f} sends against the slow one's {s}"
        );
    }

    #[test]
    fn a_zero_period_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert!(Ticker::new(Instant::now(), Duration::ZERO).is_err());
        });
    }
}
