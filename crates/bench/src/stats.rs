//! Measurements shared by the modes: latency histograms, the harness's own
//! CPU time, a process's memory.

use hdrhistogram::Histogram;

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

/// CPU seconds (user + system) this process has used, from /proc.
pub fn own_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_secs(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The source address of client `i`: clients are spread over 127.0.0.1-8,
/// so 10,000 of them do not exhaust one address's ephemeral ports.
pub fn source(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 0, 1 + (i % 8) as u8])
}
