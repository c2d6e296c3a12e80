//! CPU and memory of the server and of the machine from /proc, and a delay histogram.

use std::time::Instant;

fn tick_us() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// CPU time (user + system, all threads) of "self" or a PID, in µs; None once it is gone.
pub fn cpu_us(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ')': state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12)
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * tick_us())
}

/// VmRSS of a PID in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Busy time of the whole machine (every CPU), in µs.
fn machine_busy_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum::<f64>()
        * tick_us()
}

/// CPU counters at the start of a measured window.
pub struct Window {
    at: Instant,
    pid: Option<String>,
    srv: Option<f64>,
    gen_: f64,
    busy: f64,
}

/// What a window cost: wall seconds, server and generator CPU µs, and the CPU µs
/// the rest of the machine used meanwhile.
pub struct Spent {
    pub wall: f64,
    pub srv_us: Option<f64>,
    pub gen_us: f64,
    pub bg_us: f64,
}

impl Window {
    pub fn start(pid: u32) -> Window {
        let pid = (pid != 0).then(|| pid.to_string());
        let srv = pid.as_deref().and_then(cpu_us);
        Window {
            at: Instant::now(),
            srv,
            pid,
            gen_: cpu_us("self").unwrap_or(0.0),
            busy: machine_busy_us(),
        }
    }

    pub fn read(&self) -> Spent {
        let srv_us = match (&self.pid, self.srv) {
            (Some(pid), Some(before)) => cpu_us(pid).map(|now| now - before),
            _ => None,
        };
        let gen_us = cpu_us("self").unwrap_or(0.0) - self.gen_;
        let bg_us = machine_busy_us() - self.busy - srv_us.unwrap_or(0.0) - gen_us;
        Spent {
            wall: self.at.elapsed().as_secs_f64(),
            srv_us,
            gen_us,
            bg_us,
        }
    }
}

impl Spent {
    pub fn cores(&self, us: f64) -> f64 {
        us / 1e6 / self.wall.max(1e-9)
    }

    /// Cores the rest of the machine used, floored at 0: per-process times are exact
    /// run time while /proc/stat is sampled per tick, so light load can read negative.
    pub fn bg_cores(&self) -> f64 {
        self.cores(self.bg_us).max(0.0)
    }
}

/// Round-trip delays: 1 µs steps below 10 ms, 100 µs steps up to 2 s, then one overflow slot.
pub struct Histogram {
    counts: Vec<u32>,
    n: u64,
}

const FINE: u64 = 10_000;
const COARSE_STEP: u64 = 100;
const COARSE_END: u64 = 2_000_000;

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; (FINE + (COARSE_END - FINE) / COARSE_STEP + 1) as usize],
            n: 0,
        }
    }

    pub fn add(&mut self, us: u64) {
        let i = if us < FINE {
            us
        } else if us < COARSE_END {
            FINE + (us - FINE) / COARSE_STEP
        } else {
            FINE + (COARSE_END - FINE) / COARSE_STEP
        };
        self.counts[i as usize] += 1;
        self.n += 1;
    }

    /// The delay below which a fraction `q` of the samples lie, in µs.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let target = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= target {
                let i = i as u64;
                return Some(if i < FINE {
                    i
                } else {
                    FINE + (i - FINE) * COARSE_STEP
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for us in 1..=100 {
            h.add(us);
        }
        h.add(50_000);
        assert_eq!(h.quantile(0.5), Some(51));
        assert_eq!(h.quantile(1.0), Some(50_000));
    }
}
