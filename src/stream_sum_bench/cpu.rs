//! The CPU time this process spends on a contender's run: user plus system time of every
//! thread (its own and librdkafka's), read from `/proc/self/stat` before and after.
//!
//! On a shared machine throughput swings by a third from run to run; CPU per record swings
//! far less, and when the cores are saturated it is what throughput is made of, so it says
//! where a difference comes from. The broker's CPU (another process) is not in it.
//! Linux only: elsewhere there is no figure.

use std::time::Duration;

/// `/proc`'s clock ticks per second: USER_HZ, fixed at 100 in Linux's user-space ABI.
const TICKS_PER_SECOND: u64 = 100;

/// The process's CPU time so far, or `None` where `/proc/self/stat` cannot be read.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_of_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let ticks = user + system;
    Some(Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND))
}

/// CPU time spent from its start to [`CpuClock::elapsed`].
pub struct CpuClock(Option<Duration>);

impl CpuClock {
    pub fn start() -> Self {
        Self(process_cpu())
    }

    /// CPU seconds since the start, or `None` without `/proc`.
    pub fn elapsed(&self) -> Option<f64> {
        let start = self.0?;
        Some(process_cpu()?.saturating_sub(start).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_added_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_of_stat(stat), Some(Duration::from_secs(3)));
        assert_eq!(cpu_of_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_that_grows() {
        let clock = CpuClock::start();
        assert_eq!(clock.elapsed().map(|seconds| seconds >= 0.0), Some(true));
        // Spins until a tick (10 ms of CPU) is counted; a loaded machine may take a while.
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        let mut spin = 0_u64;
        while clock.elapsed().is_some_and(|seconds| seconds == 0.0)
            && std::time::Instant::now() < give_up
        {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(clock.elapsed().is_some_and(|seconds| seconds > 0.0));
    }
}
