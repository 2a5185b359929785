//! CPU time and peak memory of a process, from Linux's `/proc`.

use anyhow::{anyhow, Context};

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User plus system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Peak resident set size (`VmHWM`), KiB: since the start, or since the
    /// last [`reset_peak_rss`].
    pub peak_rss_kib: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
///
/// # Errors
///
/// When the process is gone or the files do not parse.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are plain. utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let cpu_ticks = ticks(14 - 3)? + ticks(15 - 3)?;
    let hz = rustix::param::clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_s: cpu_ticks as f64 / hz as f64,
        peak_rss_kib,
    })
}

/// Resets the process's peak RSS to its current RSS (Linux 4.0+); a no-op
/// when the kernel refuses.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = sample(std::process::id()).unwrap();
        // Burn a little CPU and touch 32 MiB so both counters move.
        let v = vec![1u8; 32 << 20];
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x
                .wrapping_mul(31)
                .wrapping_add(i ^ u64::from(v[(i as usize) % v.len()]));
        }
        std::hint::black_box(x);
        let after = sample(std::process::id()).unwrap();
        assert!(after.cpu_s >= before.cpu_s);
        assert!(after.peak_rss_kib >= 32 << 10, "{after:?}");
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(sample(u32::MAX - 1).is_err());
    }
}
