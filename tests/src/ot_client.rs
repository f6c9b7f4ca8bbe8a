//! An ot.js-style document client speaking the `doc.*` messages of docs/PROTOCOL.md: at most
//! one operation awaiting its ack, what is typed meanwhile buffered (composed), both
//! transformed against incoming operations.
//!
//! [`OtState`] is the algorithm alone (sans-IO: it takes the server's messages as text and
//! returns the messages to send), so one thread can drive many editors on non-blocking
//! sockets (the `documents` bench); [`OtClient`] is one editor over a blocking tungstenite
//! WebSocket (the integration tests).

use std::borrow::Cow;
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use edge_ws_ot::TextOperation;
use serde::Deserialize;
use tungstenite::{Message as T, WebSocket};

/// A xorshift generator (fixed seeds: reproducible edits).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// UTF-16 offsets of every char boundary of `s`.
fn boundaries(s: &str) -> Vec<usize> {
    let mut v = vec![0];
    let mut n = 0;
    for c in s.chars() {
        n += c.len_utf16();
        v.push(n);
    }
    v
}

/// A random insert (accents, emoji) or delete at char boundaries of `text`.
pub fn random_op(text: &str, rng: &mut Rng) -> TextOperation {
    let b = boundaries(text);
    let len = *b.last().expect("at least 0");
    let at = b[rng.below(b.len())];
    let pieces = ["a", "é", "😀", "xy", " ", "ß"];
    if len > 0 && rng.below(3) == 0 {
        let i = b.iter().position(|&x| x == at).expect("a boundary");
        let j = (i + 1 + rng.below(3)).min(b.len() - 1);
        if b[j] > at {
            return TextOperation::new()
                .retain(at)
                .delete(b[j] - at)
                .retain(len - b[j]);
        }
    }
    TextOperation::new()
        .retain(at)
        .insert(pieces[rng.below(pieces.len())])
        .retain(len - at)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The `doc.join` message for `doc` (from `since`, if given).
pub fn join_message(doc: &str, since: Option<u64>) -> String {
    match since {
        Some(s) => format!(
            r#"{{"type":"doc.join","data":{{"doc":{},"revision":{s}}}}}"#,
            json_str(doc)
        ),
        None => format!(
            r#"{{"type":"doc.join","data":{{"doc":{}}}}}"#,
            json_str(doc)
        ),
    }
}

/// A server message, as far as the client reads it (other fields are skipped).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    data: Data,
}

#[derive(Deserialize, Default)]
struct Data {
    revision: Option<u64>,
    op: Option<TextOperation>,
    text: Option<String>,
    ops: Option<Vec<CatchUp>>,
}

#[derive(Deserialize)]
struct CatchUp {
    op: TextOperation,
}

/// The ot.js client algorithm for one editor of one document, without I/O.
#[derive(Debug)]
pub struct OtState {
    /// The document.
    pub doc: String,
    /// The server revision this client's text is based on.
    pub revision: u64,
    /// The local text.
    pub text: String,
    outstanding: Option<TextOperation>,
    sent_at: Option<Instant>,
    buffer: Option<TextOperation>,
    /// `doc.joined` answers received.
    pub joins: usize,
    /// Send → ack latency of each acknowledged operation.
    pub ack_latencies: Vec<Duration>,
    /// Operations sent to the server (local edits typed while one waits for its ack are
    /// composed into one).
    pub sent: u64,
    /// Operations received from the other editors (`doc.op`).
    pub received: u64,
}

impl OtState {
    /// A client of `doc` that has not joined yet (send [`join_message`] first).
    pub fn new(doc: &str) -> OtState {
        OtState {
            doc: doc.into(),
            revision: 0,
            text: String::new(),
            outstanding: None,
            sent_at: None,
            buffer: None,
            joins: 0,
            ack_latencies: Vec::new(),
            sent: 0,
            received: 0,
        }
    }

    /// The `doc.edit` message for `op` against the revision held; the caller sends it now
    /// (the ack latency is timed from here).
    fn edit_message(&mut self, op: &TextOperation) -> String {
        self.sent_at = Some(Instant::now());
        self.sent += 1;
        format!(
            r#"{{"type":"doc.edit","data":{{"doc":{},"revision":{},"op":{}}}}}"#,
            json_str(&self.doc),
            self.revision,
            op.to_json()
        )
    }

    /// A local edit: applied now; returns the message to send if nothing awaits an ack (else
    /// the edit is buffered, composed with what is buffered already).
    pub fn local(&mut self, op: TextOperation) -> Option<String> {
        self.text = op.apply(&self.text).expect("a local op applies");
        match (&self.outstanding, self.buffer.take()) {
            (None, _) => {
                let m = self.edit_message(&op);
                self.outstanding = Some(op);
                Some(m)
            }
            (Some(_), None) => {
                self.buffer = Some(op);
                None
            }
            (Some(_), Some(b)) => {
                self.buffer = Some(b.compose(&op).expect("composes"));
                None
            }
        }
    }

    fn remote(&mut self, mut op: TextOperation) {
        if let Some(out) = self.outstanding.take() {
            let (o2, op2) = out.transform(&op).expect("transforms");
            self.outstanding = Some(o2);
            op = op2;
        }
        if let Some(buf) = self.buffer.take() {
            let (b2, op2) = buf.transform(&op).expect("transforms");
            self.buffer = Some(b2);
            op = op2;
        }
        self.text = op.apply(&self.text).expect("a remote op applies");
    }

    /// Nothing waits for an ack.
    pub fn settled(&self) -> bool {
        self.outstanding.is_none() && self.buffer.is_none()
    }

    /// Handles one message from the server; returns the message to send in answer (the
    /// buffered edit, once the outstanding one is acknowledged). Panics on anything
    /// unexpected (an error, a malformed message): the tests and the bench want to know.
    pub fn receive(&mut self, text: &str) -> Option<String> {
        let m: Incoming<'_> =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("a server message ({e}): {text}"));
        let d = m.data;
        match &*m.kind {
            "doc.ack" => {
                self.revision = d.revision.expect("revision");
                if let Some(t) = self.sent_at.take() {
                    self.ack_latencies.push(t.elapsed());
                }
                self.outstanding = self.buffer.take();
                let op = self.outstanding.take()?;
                let m = self.edit_message(&op);
                self.outstanding = Some(op);
                Some(m)
            }
            "doc.op" => {
                self.revision = d.revision.expect("revision");
                self.received += 1;
                self.remote(d.op.expect("op"));
                None
            }
            "doc.joined" => {
                if let Some(t) = d.text {
                    self.text = t;
                }
                for o in d.ops.unwrap_or_default() {
                    self.text = o.op.apply(&self.text).expect("a catch-up op applies");
                }
                self.revision = d.revision.expect("revision");
                self.joins += 1;
                None
            }
            "doc.user_joined" | "doc.user_left" | "doc.cursor" => None,
            other => panic!("unexpected {other}: {text}"),
        }
    }
}

/// One editor of one document over a blocking WebSocket (derefs to its [`OtState`]).
#[derive(Debug)]
pub struct OtClient {
    /// The connection.
    pub ws: WebSocket<TcpStream>,
    /// The algorithm's state.
    pub state: OtState,
}

impl Deref for OtClient {
    type Target = OtState;
    fn deref(&self) -> &OtState {
        &self.state
    }
}

impl DerefMut for OtClient {
    fn deref_mut(&mut self) -> &mut OtState {
        &mut self.state
    }
}

/// Opens a WebSocket to `addr` and asks to join `doc` (from `since`, if given).
pub fn join_ws(addr: SocketAddr, doc: &str, since: Option<u64>) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    ws.send(T::text(join_message(doc, since))).expect("send");
    ws
}

impl OtClient {
    /// Joins `doc` and waits for the answer.
    pub fn join(addr: SocketAddr, doc: &str) -> OtClient {
        let mut c = OtClient {
            ws: join_ws(addr, doc, None),
            state: OtState::new(doc),
        };
        c.await_join(0);
        c
    }

    /// Drops the connection (once settled) and rejoins from the revision held.
    pub fn reconnect(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.settled() && Instant::now() < deadline {
            self.pump(Duration::from_millis(5));
        }
        assert!(self.settled(), "settled before reconnecting");
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        let before = self.joins;
        self.ws = join_ws(addr, &self.state.doc, Some(self.revision));
        self.await_join(before);
    }

    /// Waits for the answer to a join (catch-up must land before local edits resume).
    fn await_join(&mut self, joins_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.joins == joins_before && Instant::now() < deadline {
            self.pump(Duration::from_millis(5));
        }
        assert!(self.joins > joins_before, "joined in time");
    }

    /// A local edit: applied now, sent when the previous one is acknowledged.
    pub fn local(&mut self, op: TextOperation) {
        if let Some(m) = self.state.local(op) {
            self.ws.send(T::text(m)).expect("send");
        }
    }

    /// Handles what arrives within `wait` (then whatever is already there).
    pub fn pump(&mut self, wait: Duration) {
        let _ = self
            .ws
            .get_mut()
            .set_read_timeout(Some(wait.max(Duration::from_micros(100))));
        loop {
            let t = match self.ws.read() {
                Ok(T::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return
                }
                Err(e) => panic!("read: {e}"),
            };
            let _ = self
                .ws
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(1)));
            if let Some(m) = self.state.receive(&t) {
                self.ws.send(T::text(m)).expect("send");
            }
        }
    }
}
