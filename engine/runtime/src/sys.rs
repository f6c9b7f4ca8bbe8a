//! Socket helpers: listeners and accepted sockets.

use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::RuntimeError;

/// Binds `n` `SO_REUSEPORT` listeners on `addr`. With port 0 the first picks the port and the
/// rest bind to it.
pub(super) fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
) -> Result<Vec<Socket>, RuntimeError> {
    let mut out = Vec::with_capacity(n);
    let mut bind_addr = addr;
    for _ in 0..n {
        let s = bind_one(bind_addr, backlog).map_err(|source| RuntimeError::Bind {
            addr: bind_addr,
            source,
        })?;
        if bind_addr.port() == 0 {
            let got = local_addr(&s).map_err(|source| RuntimeError::Io {
                op: "getsockname",
                source,
            })?;
            bind_addr.set_port(got.port());
        }
        out.push(s);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies the listener's TCP
    // state into the child): one setsockopt here instead of one per accepted connection.
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

pub(super) fn local_addr(s: &Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// Returns an accepted socket's peer address (`TCP_NODELAY` is inherited from the listener).
pub(super) fn setup_accepted(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: `fd` is a live socket owned by the caller; ManuallyDrop keeps this temporary
    // wrapper from closing it.
    let s = ManuallyDrop::new(unsafe { Socket::from_raw_fd(fd) });
    let peer: SockAddr = s.peer_addr()?;
    peer.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// Closes a descriptor the caller owns and never uses again.
pub(super) fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` and drops every copy of it after this call.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_port_zero_is_shared() {
        let ls = bind_listeners("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let a0 = local_addr(&ls[0]).unwrap();
        assert_ne!(a0.port(), 0);
        assert_eq!(local_addr(&ls[1]).unwrap(), a0);
        let _c = std::net::TcpStream::connect(a0).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let fd = loop {
            let mut got = None;
            for l in &ls {
                // SAFETY: accept4 on a live non-blocking listener; null address pointers are allowed.
                let fd = unsafe {
                    libc::accept4(
                        l.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    got = Some(fd);
                }
            }
            if let Some(fd) = got {
                break fd;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        // SAFETY: `fd` was just accepted and is owned here; the Socket closes it on drop.
        let s = unsafe { Socket::from_raw_fd(fd) };
        assert!(s.nodelay().unwrap());
        assert!(setup_accepted(fd).is_ok());
    }
}
