//! The little the bench reads from the operating system (Linux): file descriptor limits and the
//! edge's memory, found through `/proc`.

use std::{fs, path::Path};

use serde::Serialize;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; answers the new soft limit.
#[cfg(unix)]
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn raise_nofile() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// What `/proc/<pid>/status` says about a process's memory.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Anonymous part of it (heap, stacks), KiB.
    pub rss_anon_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
    pub threads: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/status: {e} (is the edge running?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        rss_anon_kib: field("RssAnon:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The processes whose CPU a run reports.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pids {
    pub edge: Option<u32>,
    pub nats: Option<u32>,
}

impl Pids {
    /// The edge (`edge_pid`, else what listens on `edge_port`) and NATS (what listens on
    /// `nats_port`).
    pub fn find(edge_pid: Option<u32>, edge_port: u16, nats_port: Option<u16>) -> Self {
        Self {
            edge: edge_pid.or_else(|| find_edge(edge_port)),
            nats: nats_port.and_then(listening_process),
        }
    }

    pub fn sample(&self) -> CpuSample {
        CpuSample {
            machine: machine_jiffies(),
            at: std::time::Instant::now(),
            edge: self.edge.and_then(cpu_seconds),
            nats: self.nats.and_then(cpu_seconds),
            generator: cpu_seconds(std::process::id()),
        }
    }
}

/// CPU seconds used so far by each process, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// (busy, all) jiffies of the whole machine, all cores.
    machine: Option<(u64, u64)>,
    at: std::time::Instant,
    edge: Option<f64>,
    nats: Option<f64>,
    generator: Option<f64>,
}

/// Cores busy on average between two samples (1.0 = one core all the time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub edge_cores: Option<f64>,
    pub nats_cores: Option<f64>,
    pub generator_cores: Option<f64>,
    /// Cores busy on the whole machine (with what none of the three used: other work, and
    /// kernel time not charged to a process).
    pub machine_cores: Option<f64>,
    /// Edge CPU seconds over the interval (for per-message figures).
    pub edge_cpu_seconds: Option<f64>,
}

impl CpuSample {
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuUse {
            edge_cores: d(self.edge, earlier.edge).map(|s| s / wall),
            nats_cores: d(self.nats, earlier.nats).map(|s| s / wall),
            generator_cores: d(self.generator, earlier.generator).map(|s| s / wall),
            machine_cores: match (self.machine, earlier.machine) {
                (Some((busy, all)), Some((busy0, all0))) if all > all0 => {
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    Some((busy - busy0) as f64 / (all - all0) as f64 * cores as f64)
                }
                _ => None,
            },
            edge_cpu_seconds: d(self.edge, earlier.edge),
        }
    }
}

/// Busy and total jiffies of all cores, from the first line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

/// The soft "Max open files" of a process.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process listening on TCP `port` (found through `/proc/net/tcp*` and the processes' open
/// sockets), else the single process named `chatlog`.
pub fn find_edge(port: u16) -> Option<u32> {
    listening_process(port).or_else(|| {
        let named = processes_named("chatlog");
        let pid = *named.first().filter(|_| named.len() == 1)?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        eprintln!(
            "warning: nothing found listening on port {port}; taking the only process named \
             chatlog as the edge: pid {pid} ({}); pass --edge-pid if that is wrong",
            cmdline.trim()
        );
        Some(pid)
    })
}

/// The process listening on TCP `port`.
pub fn listening_process(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let local_port = cols[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path())
                && inodes.iter().any(|i| Path::new(i) == link)
            {
                return Some(pid);
            }
        }
    }
    None
}

fn processes_named(name: &str) -> Vec<u32> {
    pids()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_its_own_memory_and_limits() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.threads > 0);
        assert!(nofile_of(me).is_some());
        assert!(cpu_seconds(me).is_some());
        assert!(raise_nofile().unwrap() > 0);
    }

    #[test]
    fn it_finds_who_listens_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_process(port), Some(std::process::id()));
    }
}
