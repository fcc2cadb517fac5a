//! What a process, or the whole machine, has used, read from /proc: CPU
//! time, peak resident memory, and the share of all cores busy over an
//! interval.

/// Peak resident set of a running process, from /proc.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) a running process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_time(pid).map(|(user, system)| user + system)
}

/// CPU time a running process has used so far, from /proc, as (user,
/// system) seconds. Kept apart because on this VM the system share also
/// pays the host's fault on every page of memory touched for the first
/// time in a while (BENCHMARKS.md, "Machine"), which the user share mostly
/// does not.
pub fn cpu_time(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Option<f64> {
        Some(fields.get(i)?.parse::<u64>().ok()? as f64 / CLOCK_TICKS_PER_SECOND)
    };
    Some((ticks(11)?, ticks(12)?))
}

/// USER_HZ: 100 on every Linux architecture we run on (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Busy and total jiffies of the whole machine, from the first line of
/// /proc/stat, to turn into a utilisation over an interval.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// Share of all cores busy between two [`machine_jiffies`] readings.
pub fn utilisation(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}
