//! An ot.js-style document client over a blocking tungstenite WebSocket, speaking the
//! `doc.*` messages of docs/PROTOCOL.md: at most one operation awaiting its ack, what is typed
//! meanwhile buffered (composed), both transformed against incoming operations.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use edge_ws_ot::TextOperation;
use serde_json::{json, Value};
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

/// One editor of one document.
#[derive(Debug)]
pub struct OtClient {
    /// The connection.
    pub ws: WebSocket<TcpStream>,
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
}

/// Opens a WebSocket to `addr` and asks to join `doc` (from `since`, if given).
pub fn join_ws(addr: SocketAddr, doc: &str, since: Option<u64>) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    let mut data = json!({ "doc": doc });
    if let Some(s) = since {
        data["revision"] = json!(s);
    }
    ws.send(T::text(json!({"type":"doc.join","data":data}).to_string()))
        .expect("send");
    ws
}

impl OtClient {
    /// Joins `doc` and waits for the answer.
    pub fn join(addr: SocketAddr, doc: &str) -> OtClient {
        let mut c = OtClient {
            ws: join_ws(addr, doc, None),
            doc: doc.into(),
            revision: 0,
            text: String::new(),
            outstanding: None,
            sent_at: None,
            buffer: None,
            joins: 0,
            ack_latencies: Vec::new(),
            sent: 0,
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
        self.ws = join_ws(addr, &self.doc, Some(self.revision));
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

    fn send_op(&mut self, op: &TextOperation) {
        let op: Value = serde_json::from_str(&op.to_json()).expect("op JSON");
        let m = json!({"type":"doc.edit","data":{"doc":self.doc,"revision":self.revision,"op":op}});
        self.ws.send(T::text(m.to_string())).expect("send");
        self.sent_at = Some(Instant::now());
        self.sent += 1;
    }

    /// A local edit: applied now, sent when the previous one is acknowledged.
    pub fn local(&mut self, op: TextOperation) {
        self.text = op.apply(&self.text).expect("a local op applies");
        match (&self.outstanding, self.buffer.take()) {
            (None, _) => {
                self.send_op(&op);
                self.outstanding = Some(op);
            }
            (Some(_), None) => self.buffer = Some(op),
            (Some(_), Some(b)) => self.buffer = Some(b.compose(&op).expect("composes")),
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

    /// Handles what arrives within `wait` (then whatever is already there).
    pub fn pump(&mut self, wait: Duration) {
        let _ = self
            .ws
            .get_mut()
            .set_read_timeout(Some(wait.max(Duration::from_micros(100))));
        loop {
            let m = match self.ws.read() {
                Ok(T::Text(t)) => serde_json::from_str::<Value>(&t).expect("JSON"),
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
            self.handle(&m);
        }
    }

    fn handle(&mut self, m: &Value) {
        match m["type"].as_str().unwrap_or("") {
            "doc.ack" => {
                self.revision = m["data"]["revision"].as_u64().expect("revision");
                if let Some(t) = self.sent_at.take() {
                    self.ack_latencies.push(t.elapsed());
                }
                self.outstanding = self.buffer.take();
                if let Some(op) = self.outstanding.clone() {
                    self.send_op(&op);
                }
            }
            "doc.op" => {
                self.revision = m["data"]["revision"].as_u64().expect("revision");
                let op = TextOperation::from_json(&m["data"]["op"].to_string()).expect("op");
                self.remote(op);
            }
            "doc.joined" => {
                let d = &m["data"];
                if let Some(t) = d["text"].as_str() {
                    self.text = t.to_string();
                }
                if let Some(ops) = d["ops"].as_array() {
                    for o in ops {
                        self.text = TextOperation::from_json(&o["op"].to_string())
                            .expect("op")
                            .apply(&self.text)
                            .expect("a catch-up op applies");
                    }
                }
                self.revision = d["revision"].as_u64().expect("revision");
                self.joins += 1;
            }
            "doc.user_joined" | "doc.user_left" | "doc.cursor" => {}
            other => panic!("unexpected {other}: {m}"),
        }
    }
}
