//! The `edge-ws` binary logs what an operator needs: start, refused upgrades, protocol-error
//! closes with their code, shutdown with the counters; as text or as JSON lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use edge_ws::testing::TempDir;

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The `--data-dir` (removed when the server is dropped).
    _data: TempDir,
}

impl Server {
    fn start(args: &[&str]) -> (Server, SocketAddr) {
        let data = TempDir::new("edge-ws-logs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-ws"))
            .args(["--addr", "127.0.0.1:0", "--cores", "1", "--api-addr", "off"])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start edge-ws");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            lines,
            seen: Vec::new(),
            _data: data,
        };
        let line = s.wait_for("listening on ws://");
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c == '"' || c.is_whitespace()).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (s, addr)
    }

    /// The first log line (from now on) containing `needle`; panics after 10 s.
    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit code once the shutdown was logged.
    fn stop(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.wait_for("signal received");
        self.wait_for("stopped");
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

/// A bad upgrade (no key) and a protocol error (an unmasked frame after a good upgrade).
fn misbehave(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    // An unmasked text frame from a client: 1002.
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let _ = s.read(&mut buf);
}

#[test]
fn text_logs_show_start_refusals_protocol_errors_and_shutdown() {
    let (mut server, addr) = Server::start(&[]);
    misbehave(addr);
    server.wait_for("upgrade refused: bad handshake");
    let line = server.wait_for("closing: protocol error");
    assert!(line.contains("code=1002"), "{line}");
    assert!(line.contains("core"), "no core span in {line}");
    assert_eq!(server.stop(), 0);
    let last = server.seen.last().unwrap();
    assert!(last.contains("rejected_bad_handshake=1"), "{last}");
    assert!(last.contains("protocol_errors=1"), "{last}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (mut server, addr) = Server::start(&["--log-format", "json"]);
    misbehave(addr);
    let line = server.wait_for("closing: protocol error");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["code"], 1002);
    assert_eq!(v["span"]["name"], "core");
    assert_eq!(server.stop(), 0);
    for line in &server.seen {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[test]
fn bad_configuration_exits_2_with_a_message() {
    let dir = TempDir::new("edge-ws-badcfg");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nwrite_buffer_limit = 10\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-ws"))
        .args(["--config", path.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    drop(dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("write_buffer_limit"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_edge-ws"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge-ws "));
}
