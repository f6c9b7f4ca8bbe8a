//! The few operating-system services the layers above need that std does not offer: a cheap
//! coarse clock, and waiting for a termination signal. Safe wrappers, so that every `unsafe`
//! block of the engine stays in this crate.

use std::time::Instant;

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the same on every core, a few nanoseconds to read
/// where `Instant::now` costs tens, with the resolution of one kernel tick (1–4 ms). For rate
/// limiters and other buckets refilled over seconds. Falls back to `fallback.elapsed()` if the
/// clock cannot be read.
pub fn coarse_monotonic_nanos(fallback: Instant) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on our stack for the
    // whole call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc == 0 {
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    } else {
        fallback.elapsed().as_nanos() as u64
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset, which initialises
    // it; sigaddset then only modifies the set we own on the stack, with valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and in the threads it spawns afterwards,
/// so that only [`wait_for_termination`] receives them. Call it first thing in `main`, before
/// starting the engine.
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: `set` is a valid, initialised signal set; a null old-set pointer is allowed by
    // pthread_sigmask(3).
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGINT or SIGTERM (which must be blocked, see [`block_termination_signals`]) and
/// returns the signal number.
pub fn wait_for_termination() -> i32 {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result; both outlive the
    // call.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// Raises the open-files limit (`RLIMIT_NOFILE`) to at least `n`, raising the hard limit too
/// where the process may (root); returns the soft limit in force afterwards (0 if it cannot be
/// read).
pub fn raise_nofile_limit(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass, which lives on our
    // stack for each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < n {
            let want = libc::rlimit {
                rlim_cur: n,
                rlim_max: n.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                lim.rlim_cur = n.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_moves_forward() {
        let start = Instant::now();
        let a = coarse_monotonic_nanos(start);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = coarse_monotonic_nanos(start);
        assert!(b > a, "{a} then {b}");
    }

    #[test]
    fn nofile_limit_is_at_least_what_it_was() {
        let before = raise_nofile_limit(0);
        assert!(before > 0);
        assert!(raise_nofile_limit(before) >= before);
    }
}
