//! Linux helpers shared by the load generator and the servers: file-descriptor limits, core
//! pinning, CPU time and resident memory from /proc, and a minimal level-triggered epoll.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit that only raises the soft limit to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Pins the calling thread to `core`; false if that core does not exist or pinning failed.
pub fn pin_current(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Parses a core list such as `1`, `0,1` or `2-3`.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a
                .trim()
                .parse()
                .map_err(|_| format!("bad core list {s:?}"))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| format!("bad core list {s:?}"))?;
            if b < a || b - a > 4096 {
                return Err(format!("bad core range {part:?}"));
            }
            out.extend(a..=b);
        } else {
            out.push(
                part.trim()
                    .parse()
                    .map_err(|_| format!("bad core list {s:?}"))?,
            );
        }
    }
    Ok(out)
}

/// CPU time (user + system) consumed so far by every live thread of process `pid`, in ns.
///
/// Sums the first field of `/proc/PID/task/*/schedstat` (nanosecond precision); falls back to
/// utime+stime from `/proc/PID/stat` (clock-tick precision) where schedstat is missing.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut total = 0u64;
        let mut any = false;
        for entry in dir.flatten().take(100_000) {
            let mut p = entry.path();
            p.push("schedstat");
            if let Ok(s) = fs::read_to_string(&p) {
                if let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += ns;
                    any = true;
                }
            }
        }
        if any {
            return Some(total);
        }
    }
    stat_cpu_ns(pid)
}

/// CPU time (user + system) used by this process so far, in ns, including threads that have
/// already exited (`getrusage(RUSAGE_SELF)`, microsecond precision).
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of process `pid` from `/proc/PID/stat`, converted to ns (tick precision).
pub fn stat_cpu_ns(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime is field 14, stime 15 (1-based in proc(5)).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((utime + stime) * 1_000_000_000 / hz)
}

/// Resident set size of process `pid` in KiB (VmRSS from `/proc/PID/status`).
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Readable (or hang-up / error) readiness.
pub const EV_IN: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
/// Writable readiness.
pub const EV_OUT: u32 = libc::EPOLLOUT as u32;
/// Error or hang-up.
pub const EV_ERR: u32 = libc::EPOLLERR as u32 | libc::EPOLLHUP as u32;

/// A level-triggered epoll instance; tokens are caller-chosen `u64`s.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// One readiness event: the token given at registration and the `EV_*` bits.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The registration token.
    pub token: u64,
    /// Readiness bits (`EV_IN`, `EV_OUT`, `EV_ERR`).
    pub flags: u32,
}

impl Epoll {
    /// Creates an epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event living across the call; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Registers `fd` for `events` under `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes the interest set of a registered `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Removes `fd` from the interest set.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` for events, appending them to `out` (cleared first).
    pub fn wait(
        &self,
        raw: &mut [libc::epoll_event],
        out: &mut Vec<Event>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        out.clear();
        let max = raw.len().min(i32::MAX as usize) as i32;
        // SAFETY: `raw` is a valid writable buffer of `max` epoll_events.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), raw.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        for ev in &raw[..n as usize] {
            // epoll_event is packed on x86_64: copy the fields out by value.
            let token = ev.u64;
            let flags = ev.events;
            out.push(Event { token, flags });
        }
        Ok(())
    }
}

/// A zeroed epoll event buffer of `n` entries.
pub fn event_buffer(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` so that a bind to a source address defers the port choice
/// to connect (the 4-tuple, not the address, then has to be unique).
pub fn set_bind_no_port(fd: RawFd) -> io::Result<()> {
    set_flag(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)
}

/// Sets `TCP_NODELAY` on a raw socket.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_flag(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY)
}

/// Sets an integer socket option to 1.
fn set_flag(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
