//! `--pin`: which CPU each pipeline stage runs on (`sched_setaffinity`).
//!
//! A stage pins itself before it starts its runtime, so every thread it
//! creates afterwards (tokio workers, the blocking pool, transport threads)
//! inherits the one-CPU mask.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// One entry of `--pin`: a CPU number this process may run on.
pub fn parse_cpu(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let cpu: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a CPU number (0, 1, ...)"))?;
    let allowed = allowed_cpus()?;
    if !allowed.contains(&cpu) {
        return Err(format!(
            "CPU {cpu} does not exist or is not available to this process (available: {})",
            fmt_list(&allowed)
        ));
    }
    Ok(cpu)
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| format!("reading this process's CPU affinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// `--pin` for `stages` stages (source, filters, sink): one CPU for all of
/// them, or exactly one per stage. An empty list means not pinned.
pub fn per_stage(pin: &[usize], stages: usize) -> Result<Option<Vec<usize>>, String> {
    match pin.len() {
        0 => Ok(None),
        1 => Ok(Some(vec![pin[0]; stages])),
        n if n == stages => Ok(Some(pin.to_vec())),
        n => Err(format!(
            "--pin: {n} CPUs for {stages} stages (source, {} filter(s), sink); give one CPU for all of them or exactly {stages}",
            stages.saturating_sub(2)
        )),
    }
}

/// Pins the calling thread (and every thread it starts afterwards) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .map_err(|e| format!("CPU {cpu} is out of range: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// `0,1,1` for people.
pub fn fmt_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_for_all_or_one_per_stage() {
        assert_eq!(per_stage(&[], 3).unwrap(), None);
        assert_eq!(per_stage(&[0], 3).unwrap(), Some(vec![0, 0, 0]));
        assert_eq!(per_stage(&[0, 1, 1], 3).unwrap(), Some(vec![0, 1, 1]));
        let e = per_stage(&[0, 1], 4).unwrap_err();
        assert!(
            e.contains("2 CPUs for 4 stages") && e.contains("2 filter(s)"),
            "{e}"
        );
    }

    #[test]
    fn cpus_are_checked_against_this_process() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert_eq!(parse_cpu(&allowed[0].to_string()), Ok(allowed[0]));
        let e = parse_cpu("100000").unwrap_err();
        assert!(e.contains("CPU 100000 does not exist"), "{e}");
        let e = parse_cpu("one").unwrap_err();
        assert!(e.contains("not a CPU number"), "{e}");
        let e = parse_cpu("-1").unwrap_err();
        assert!(e.contains("not a CPU number"), "{e}");
    }

    #[test]
    fn pinning_sets_the_mask() {
        let cpu = allowed_cpus().unwrap()[0];
        // In a thread of its own: the mask stays with that thread.
        std::thread::spawn(move || {
            pin_self(cpu).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
        })
        .join()
        .unwrap();
    }
}
