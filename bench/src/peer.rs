//! What the peer servers share: the command line, the listener, the one-thread runtime and
//! the path contract (`/sub` subscribes, `/pub` publishes, any other path echoes).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;

use socket2::{Domain, Socket, Type};

use crate::args::{Arg, Args};
use crate::sys;

/// Subscriber path: receives every message published on [`PUB_PATH`].
pub const SUB_PATH: &str = "/sub";
/// Publisher path: every message received is relayed to all subscribers.
pub const PUB_PATH: &str = "/pub";
/// Capacity of the in-process broadcast channels (wsload keeps far fewer in flight).
pub const BROADCAST_CAPACITY: usize = 4096;

/// What a connection does, from its request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Echo every text and binary message.
    Echo,
    /// Receive every published message.
    Sub,
    /// Publish every message received.
    Pub,
}

/// The route for a request path (the query string is ignored).
pub fn route(path: &str) -> Route {
    let p = path.split('?').next().unwrap_or("");
    if p == SUB_PATH {
        Route::Sub
    } else if p == PUB_PATH {
        Route::Pub
    } else {
        Route::Echo
    }
}

/// A peer server's options.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    /// Listen address.
    pub addr: SocketAddr,
    /// Core to pin the worker thread to.
    pub core: Option<usize>,
    /// Subscribers `send().await` each message (write and flush per message, the shape of
    /// axum's chat example) instead of flushing once per batch of queued messages.
    pub send_each: bool,
}

static ARGS: OnceLock<PeerArgs> = OnceLock::new();

/// The options [`serve`] was started with (defaults before that).
pub fn args() -> &'static PeerArgs {
    ARGS.get_or_init(|| PeerArgs {
        addr: "127.0.0.1:9001".parse().expect("default addr"),
        core: None,
        send_each: false,
    })
}

/// Parses `--addr HOST:PORT` and `--core N`; prints usage and exits on `--help` or errors.
pub fn parse_args(name: &str) -> PeerArgs {
    let usage = format!(
        "{name} [--addr 127.0.0.1:9001] [--core N] [--send-each]\n\n\
         One worker thread. Paths: {SUB_PATH} subscribes, {PUB_PATH} publishes (relayed to every\n\
         subscriber), anything else echoes text and binary messages.\n\
         --send-each: subscribers write and flush every message on its own (no batching).\n"
    );
    let mut a = Args::from_env();
    let mut out = PeerArgs {
        addr: "127.0.0.1:9001".parse().expect("default addr"),
        core: None,
        send_each: false,
    };
    let res: Result<(), String> = (|| {
        while let Some(arg) = a.next_arg()? {
            match arg {
                Arg::Long(n) if n == "addr" => {
                    let v = a.value()?;
                    out.addr = v.parse().map_err(|_| format!("bad --addr {v:?}"))?;
                }
                Arg::Long(n) if n == "core" => out.core = Some(a.parse()?),
                Arg::Long(n) if n == "send-each" => out.send_each = true,
                Arg::Long(n) if n == "help" => return Err(String::new()),
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        if e.is_empty() {
            print!("{usage}");
            std::process::exit(0);
        }
        eprintln!("{name}: {e}\n\n{usage}");
        std::process::exit(2);
    }
    out
}

/// Raises RLIMIT_NOFILE and pins the calling thread if asked.
pub fn prepare(args: &PeerArgs) {
    sys::raise_nofile();
    if let Some(c) = args.core {
        if !sys::pin_current(c) {
            eprintln!("warning: could not pin to core {c}");
        }
    }
}

/// A non-blocking listener with SO_REUSEADDR and a 4096 backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A current-thread tokio runtime (the single worker).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A parsed upgrade request: (head length, request path, the 101 response to send).
pub type Upgrade = (usize, String, Vec<u8>);

/// Server side of the upgrade, for libraries without their own (fastwebsockets without the
/// hyper-based `upgrade` feature): parses the request head at the start of `buf`.
///
/// `Ok(None)`: incomplete; `Ok(Some((head_len, path, response)))`: a valid upgrade request;
/// `Err(response)`: answer with this and close.
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<Upgrade>, &'static [u8]> {
    const BAD: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > 16 * 1024 {
                Err(BAD)
            } else {
                Ok(None)
            };
        }
        Err(_) => return Err(BAD),
    };
    if req.method != Some("GET") {
        return Err(BAD);
    }
    let mut key = None;
    let mut upgrade = false;
    let mut version = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = h.value.eq_ignore_ascii_case(b"websocket");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version = h.value == b"13";
        }
    }
    let (Some(key), true, true) = (key, upgrade, version) else {
        return Err(BAD);
    };
    let accept = crate::ws::accept_key(key);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(Some((
        n,
        req.path.unwrap_or("/").to_string(),
        resp.into_bytes(),
    )))
}

/// The whole `main` of a peer server: parses the command line, binds, and runs the
/// one-thread accept loop; each accepted connection (TCP_NODELAY set) is handed to `conn`
/// together with a clone of the relay's broadcast sender.
pub fn serve<M, F, Fut>(name: &str, conn: F)
where
    M: Clone + Send + 'static,
    F: Fn(tokio::net::TcpStream, tokio::sync::broadcast::Sender<M>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let args = parse_args(name);
    prepare(&args);
    let _ = ARGS.set(args.clone());
    let std_listener = listen(args.addr).unwrap_or_else(|e| {
        eprintln!("{name}: listen {}: {e}", args.addr);
        std::process::exit(1);
    });
    runtime().block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        let (tx, _) = tokio::sync::broadcast::channel::<M>(BROADCAST_CAPACITY);
        eprintln!("{name} listening on {}", args.addr);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(conn(stream, tx.clone()));
        }
    });
}

/// Runs one upgraded `Stream + Sink` WebSocket (tokio-tungstenite, tokio-websockets) by its
/// route: echo, subscriber (`rx`, taken before the 101 so nothing published after it is
/// missed) or publisher (`tx`). `is_data` tells text and binary messages from control frames.
pub async fn relay<S, M, E>(
    route: Route,
    ws: S,
    tx: tokio::sync::broadcast::Sender<M>,
    rx: tokio::sync::broadcast::Receiver<M>,
    is_data: fn(&M) -> bool,
) where
    S: futures_util::Stream<Item = Result<M, E>> + futures_util::Sink<M> + Unpin,
    M: Clone,
{
    match route {
        Route::Echo => {
            drop(rx);
            echo_stream(ws, is_data).await;
        }
        Route::Sub => subscriber_stream(ws, rx).await,
        Route::Pub => {
            drop(rx);
            publisher_stream(ws, tx, is_data).await;
        }
    }
}

/// Echo loop for a `Stream + Sink` WebSocket (tokio-tungstenite, tokio-websockets): every data
/// message (`is_data`) is fed back, and everything already readable goes into the same flush.
/// The library answers pings and closes itself.
pub async fn echo_stream<S, M, E>(mut ws: S, is_data: fn(&M) -> bool)
where
    S: futures_util::Stream<Item = Result<M, E>> + futures_util::Sink<M> + Unpin,
{
    use futures_util::{FutureExt, SinkExt, StreamExt};
    while let Some(Ok(msg)) = ws.next().await {
        if is_data(&msg) && ws.feed(msg).await.is_err() {
            return;
        }
        loop {
            match ws.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    if is_data(&m) && ws.feed(m).await.is_err() {
                        return;
                    }
                }
                Some(_) => {
                    let _ = ws.flush().await;
                    return;
                }
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// Subscriber loop: relays every broadcast message to `ws`, whatever is queued in one flush
/// (or one flush per message with `--send-each`); incoming frames are only read so the library
/// can answer pings and closes.
pub async fn subscriber_stream<S, M, E>(mut ws: S, mut rx: tokio::sync::broadcast::Receiver<M>)
where
    S: futures_util::Stream<Item = Result<M, E>> + futures_util::Sink<M> + Unpin,
    M: Clone,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let batch = !args().send_each;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let msg = match m {
                    Ok(m) => m,
                    Err(RecvError::Lagged(n)) => {
                        eprintln!("subscriber lagged, {n} messages lost");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if ws.feed(msg).await.is_err() {
                    return;
                }
                if batch {
                    loop {
                        match rx.try_recv() {
                            Ok(m) => {
                                if ws.feed(m).await.is_err() {
                                    return;
                                }
                            }
                            Err(TryRecvError::Lagged(n)) => {
                                eprintln!("subscriber lagged, {n} messages lost");
                            }
                            Err(_) => break,
                        }
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            m = ws.next() => match m {
                // A close reply or pong may be queued: push it out.
                Some(Ok(_)) => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
}

/// Publisher loop: every data message received is sent to the broadcast channel (no
/// subscribers is not an error).
pub async fn publisher_stream<S, M, E>(
    mut ws: S,
    tx: tokio::sync::broadcast::Sender<M>,
    is_data: fn(&M) -> bool,
) where
    S: futures_util::Stream<Item = Result<M, E>> + Unpin,
{
    use futures_util::StreamExt;
    while let Some(Ok(msg)) = ws.next().await {
        if is_data(&msg) {
            let _ = tx.send(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/sub"), Route::Sub);
        assert_eq!(route("/pub?x=1"), Route::Pub);
        assert_eq!(route("/"), Route::Echo);
        assert_eq!(route("/subx"), Route::Echo);
    }

    #[test]
    fn upgrade_roundtrip() {
        let req = crate::ws::upgrade_request("127.0.0.1:1", "/sub");
        let (n, path, resp) = parse_upgrade(&req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(path, "/sub");
        let acc = crate::ws::accept_key(crate::ws::CLIENT_KEY.as_bytes());
        assert_eq!(
            crate::ws::check_upgrade_response(&resp, &acc),
            Ok(Some(resp.len()))
        );
        assert!(parse_upgrade(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(parse_upgrade(b"GET / HT"), Ok(None));
    }
}
