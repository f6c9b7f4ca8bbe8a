//! Opening connections: optional source-address spreading over 127.0.0.0/8 and the WebSocket
//! upgrade with the fixed key, pipelined in small batches.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::sys;
use crate::ws;

/// An open connection, upgraded unless raw, plus any bytes read past the upgrade response.
#[derive(Debug)]
pub struct Opened {
    /// The socket (blocking, with read/write timeouts set).
    pub stream: TcpStream,
    /// WebSocket bytes that arrived with the 101 response.
    pub leftover: Vec<u8>,
}

/// Connects and upgrades, rotating over source addresses.
#[derive(Debug)]
pub struct Dialer {
    addr: SocketAddrV4,
    src_ips: u32,
    next_src: u32,
    timeout: Duration,
    expected_accept: String,
    host: String,
}

impl Dialer {
    /// A dialer for `addr`; `src_ips` > 1 spreads connections over 127.0.0.1 ..= 127.0.0.N.
    pub fn new(addr: SocketAddrV4, src_ips: u32, timeout: Duration) -> Dialer {
        Dialer {
            addr,
            src_ips: src_ips.clamp(1, 250),
            next_src: 0,
            timeout,
            expected_accept: ws::accept_key(ws::CLIENT_KEY.as_bytes()),
            host: addr.to_string(),
        }
    }

    /// A TCP connection (blocking, TCP_NODELAY, read/write timeouts = the dial timeout).
    pub fn connect(&mut self) -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if self.src_ips > 1 {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + (self.next_src % self.src_ips) as u8);
            self.next_src = self.next_src.wrapping_add(1);
            sys::set_bind_no_port(sock.as_raw_fd())?;
            sock.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
        }
        sock.connect_timeout(&SocketAddr::V4(self.addr).into(), self.timeout)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(self.timeout))?;
        sock.set_write_timeout(Some(self.timeout))?;
        Ok(sock.into())
    }

    /// The upgrade request for `path`.
    pub fn request(&self, path: &str) -> Vec<u8> {
        ws::upgrade_request(&self.host, path)
    }

    /// Reads and checks the 101 response on a blocking stream.
    pub fn read_response(&self, stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        for _ in 0..64 {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed during the upgrade",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            match ws::check_upgrade_response(&buf, &self.expected_accept) {
                Ok(Some(head)) => return Ok(buf.split_off(head)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upgrade response too fragmented",
        ))
    }

    /// One connection: connect, then (unless `raw`) upgrade on `path`.
    pub fn open_one(&mut self, path: &str, raw: bool) -> io::Result<Opened> {
        let mut stream = self.connect()?;
        if raw {
            return Ok(Opened {
                stream,
                leftover: Vec::new(),
            });
        }
        stream.write_all(&self.request(path))?;
        let leftover = self.read_response(&mut stream)?;
        Ok(Opened { stream, leftover })
    }

    /// Opens `n` connections in batches of 64 (connect + send all requests, then read all
    /// responses), stopping at `deadline`. Returns the connections, the failure count and the
    /// first failure.
    pub fn open_many(
        &mut self,
        n: usize,
        path: &str,
        raw: bool,
        deadline: Instant,
    ) -> (Vec<Opened>, u64, Option<String>) {
        let req = self.request(path);
        let mut out = Vec::with_capacity(n);
        let mut failures = 0u64;
        let mut first: Option<String> = None;
        let note = |e: io::Error, first: &mut Option<String>| {
            if first.is_none() {
                *first = Some(e.to_string());
            }
        };
        let mut left = n;
        while left > 0 {
            if Instant::now() >= deadline {
                failures += left as u64;
                first.get_or_insert_with(|| "setup deadline passed".into());
                break;
            }
            let batch = left.min(64);
            left -= batch;
            let mut pending = Vec::with_capacity(batch);
            for _ in 0..batch {
                match self.connect() {
                    Ok(mut s) => {
                        if raw {
                            out.push(Opened {
                                stream: s,
                                leftover: Vec::new(),
                            });
                        } else if let Err(e) = s.write_all(&req) {
                            failures += 1;
                            note(e, &mut first);
                        } else {
                            pending.push(s);
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        note(e, &mut first);
                    }
                }
            }
            for mut s in pending {
                match self.read_response(&mut s) {
                    Ok(leftover) => out.push(Opened {
                        stream: s,
                        leftover,
                    }),
                    Err(e) => {
                        failures += 1;
                        note(e, &mut first);
                    }
                }
            }
        }
        (out, failures, first)
    }
}

/// Source addresses needed for `conns` connections (ephemeral range / 2 per address, at least 1).
pub fn auto_src_ips(conns: usize) -> u32 {
    let per = local_port_range()
        .map_or(28_000, |(a, b)| b.saturating_sub(a).div_ceil(2))
        .max(1000);
    (conns.div_ceil(per as usize) as u32).clamp(1, 250)
}

fn local_port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}
