//! The few operating-system services the layers above need that std does not offer: a cheap
//! coarse clock, waiting for a termination signal, and the process's file limits. Safe
//! wrappers, so that every `unsafe` block of the engine stays in this crate.

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

/// Lowers (or raises, up to the hard limit) the largest file the process may write
/// (`RLIMIT_FSIZE`, soft limit) to `bytes`, clamped to the hard limit; returns the soft limit in
/// force afterwards. A write or `ftruncate` past it fails with `EFBIG` once [`ignore_sigxfsz`]
/// has been called (by default the kernel kills the process with `SIGXFSZ`). The limit covers
/// every regular file of the process, so this is for a process of its own: the store's
/// full-disk tests run in a child.
pub fn limit_file_size(bytes: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass, which lives on our
    // stack for each call; the return codes are checked.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = bytes.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Ignores `SIGXFSZ` in the whole process, so that a write past the file-size limit (see
/// [`limit_file_size`]) fails with `EFBIG` instead of killing the process.
pub fn ignore_sigxfsz() -> std::io::Result<()> {
    // SAFETY: installing SIG_IGN runs no code of ours in signal context; SIGXFSZ is a valid,
    // catchable signal; the SIG_ERR return is checked.
    let old = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if old == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time, in seconds, of this process's threads whose name starts with one of `prefixes`
/// (from `/proc/self/task/*/schedstat`, nanosecond precision; 0 where unreadable). For benches
/// that report the server's CPU per message when clients run in the same process.
pub fn threads_cpu_seconds(prefixes: &[&str]) -> f64 {
    threads_sched_seconds(prefixes).0
}

/// Seconds on a CPU and seconds runnable but waiting for one, of this process's threads whose
/// name starts with one of `prefixes` (`/proc/self/task/*/schedstat`; 0 where unreadable).
pub fn threads_sched_seconds(prefixes: &[&str]) -> (f64, f64) {
    let (mut run, mut wait) = (0u64, 0u64);
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|x| comm.trim().starts_with(x)) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        run += f.next().unwrap_or(0);
        wait += f.next().unwrap_or(0);
    }
    (run as f64 / 1e9, wait as f64 / 1e9)
}

/// Whether the kernel offers kernel TLS: the `tls` TCP upper-layer protocol (`TCP_ULP`).
///
/// Probed once per process: `setsockopt(TCP_ULP, "tls")` on a fresh, unconnected TCP socket.
/// A kernel with the ULP refuses it with `ENOTCONN` (it attaches only to an established
/// connection) or accepts it; one without answers `ENOENT` (no such ULP, after trying to load
/// the module). The probe socket is closed at once. Not gated on the `tls` feature: the answer
/// is reported in the logs and the `ktls_available` counter either way.
pub fn ktls_available() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let available = probe_tcp_ulp_tls();
        if available {
            tracing::info!("kernel TLS (TCP_ULP \"tls\") is available; TLS stays in user space");
        } else {
            tracing::info!(
                "kernel TLS (TCP_ULP \"tls\") is not available; TLS runs in user space (rustls)"
            );
        }
        available
    })
}

fn probe_tcp_ulp_tls() -> bool {
    let sock = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) {
        Ok(s) => s,
        Err(_) => return false,
    };
    use std::os::fd::AsRawFd;
    let name = b"tls";
    // SAFETY: the fd is a TCP socket we own for the whole call (`sock` outlives it); the
    // option value points at `name`, a 3-byte static string whose exact length we pass, and the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return true;
    }
    let err = std::io::Error::last_os_error();
    err.raw_os_error() == Some(libc::ENOTCONN)
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

    #[test]
    fn file_size_limit_is_clamped_to_the_hard_limit() {
        // Raising to "no limit" is clamped to the hard limit and leaves writes possible, so it
        // is safe in a test process; lowering is tested in a child by the store's tests.
        let now = limit_file_size(u64::MAX).unwrap();
        assert!(now > 0);
        ignore_sigxfsz().unwrap();
    }

    #[test]
    fn ktls_probe_agrees_with_the_kernels_ulp_list() {
        // Probe first: it may load the tls module, which then shows in the list.
        let probed = ktls_available();
        let Ok(list) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp") else {
            return; // no procfs here: nothing to compare with
        };
        assert_eq!(
            probed,
            list.split_whitespace().any(|u| u == "tls"),
            "{list:?}"
        );
    }
}
