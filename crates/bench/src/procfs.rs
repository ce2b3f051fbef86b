//! What Linux's `/proc` says about CPU time and memory: of the measured process, of the
//! bench process itself (the simulator, the load generator and the collector), of a local
//! RabbitMQ, and of the whole machine.
//!
//! On a shared two-core machine the broker, the simulator and the subject compete for the
//! same CPUs, so a subject's throughput depends on everyone's CPU cost per command; these
//! figures show who spends it.

use std::sync::OnceLock;

use anyhow::Context as _;

/// The command name of the Erlang VM that runs RabbitMQ.
const BROKER_COMMAND: &str = "beam.smp";

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time of all its threads so far.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The most it was ever resident (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Resident heap, stacks and other private memory (`RssAnon`).
    pub rss_anon_bytes: u64,
    /// Resident pages of mapped files, mostly the binary's own code (`RssFile`).
    pub rss_file_bytes: u64,
}

/// CPU time and memory of process `pid`.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status could not be read"))?;
    let memory = |key| {
        status_kib(&status, key)
            .map(|kib| kib * 1024)
            .with_context(|| format!("/proc/{pid}/status has no {key}"))
    };
    Ok(Usage {
        cpu_seconds: cpu_seconds(pid)?,
        rss_bytes: memory("VmRSS")?,
        peak_rss_bytes: memory("VmHWM")?,
        rss_anon_bytes: memory("RssAnon")?,
        rss_file_bytes: memory("RssFile")?,
    })
}

/// Voluntary and involuntary context switches of every live thread of process `pid` so far:
/// each time one of them went to sleep waiting for work, or was preempted.
/// `/proc/<pid>/status` counts the main thread's only.
pub fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("/proc/{pid}/task could not be read"))?;
    // A thread that exits between listing and reading simply no longer counts.
    Ok(tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| thread_switches(&status))
        .sum())
}

/// `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` of a thread's `status`.
fn thread_switches(status: &str) -> u64 {
    let count = |key: &str| {
        status.lines().find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    count("voluntary_ctxt_switches").unwrap_or(0) + count("nonvoluntary_ctxt_switches").unwrap_or(0)
}

/// User plus system CPU time of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat could not be read"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat is not understood"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// The local RabbitMQ's process, if the broker runs on this machine.
pub fn find_broker() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let command = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (command.trim() == BROKER_COMMAND).then_some(pid)
    })
}

/// CPU time the whole machine spent busy and in total (every CPU counts), so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    pub busy_seconds: f64,
    pub total_seconds: f64,
}

impl MachineCpu {
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks = machine_ticks(stat.lines().next()?)?;
        let per_second = clock_ticks_per_second();
        Some(Self {
            busy_seconds: ticks.0 as f64 / per_second,
            total_seconds: ticks.1 as f64 / per_second,
        })
    }
}

/// Busy and total ticks of the `cpu` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal …; idle and iowait are the CPU doing nothing. Guest time is already
/// counted in user time, so only the first eight fields add up.
fn machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // After the name come state (field 3) … utime (14) and stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// `getconf CLK_TCK`: the unit of `/proc` CPU times. Linux has used 100 on every common
/// architecture for decades, so that is the fallback if `getconf` is missing.
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_names() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2530 0 0 0 \
                    173 42 0 0 20 0 5 0 123456 12345678 2048 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(215));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\tprint-abort-wor\nVmHWM:\t   14336 kB\nVmRSS:\t   12000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(14336));
        assert_eq!(status_kib(status, "VmRSS"), Some(12000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn a_threads_switches_are_voluntary_plus_involuntary() {
        let status = "Name:\ttokio-rt-worker\nvoluntary_ctxt_switches:\t1200\n\
                      nonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(thread_switches(status), 1234);
        assert_eq!(thread_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn machine_time_leaves_out_idle_and_iowait() {
        let line = "cpu  100 5 50 800 40 3 2 0 7 0";
        assert_eq!(machine_ticks(line), Some((160, 1000)));
        assert_eq!(machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn this_process_has_a_usage() {
        // Sleeping gives up the CPU: at least one context switch of a live thread.
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(context_switches(std::process::id()).expect("own /proc entry") >= 1);
        let usage = usage(std::process::id()).expect("own /proc entry");
        assert!(usage.peak_rss_bytes >= usage.rss_bytes && usage.rss_bytes > 0);
        assert!(MachineCpu::read().is_some_and(|cpu| cpu.total_seconds > 0.0));
    }
}
