//! The `edge-ws` binary as the integration tests run it: started on loopback, its address read
//! from its log, killed (SIGKILL) on purpose or when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_ws::testing::TempDir;

/// A running `edge-ws` process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP API's address (it runs on a free port).
    pub api: Option<SocketAddr>,
    /// Log lines after the start line, as they come.
    pub log: std::sync::mpsc::Receiver<String>,
    /// The data directory given with `--data-dir` (removed after the process is killed).
    data: Option<TempDir>,
}

impl Server {
    /// Starts it on a free port with `cores` cores and `config` (if any).
    pub fn start(cores: usize, config: Option<&Path>) -> Server {
        Server::try_start("127.0.0.1:0", cores, config).expect("edge-ws starts")
    }

    /// Starts it on `addr`, retrying while the port is still held by a previous process.
    pub fn start_on(addr: SocketAddr, cores: usize, config: Option<&Path>) -> Server {
        for _ in 0..50 {
            if let Some(s) = Server::try_start(&addr.to_string(), cores, config) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("edge-ws did not start on {addr}");
    }

    /// Starts it and waits for the log line with its address; `None` if it exited first.
    pub fn try_start(addr: &str, cores: usize, config: Option<&Path>) -> Option<Server> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-ws"));
        cmd.args(["--addr", addr, "--cores", &cores.to_string()])
            .args(["--stats-interval", "0", "--api-addr", "127.0.0.1:0"]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // The built-in configuration keeps data in ./edge-ws-data: a test without its own
        // [store] gets a fresh directory instead.
        let own_store = config
            .and_then(|c| std::fs::read_to_string(c).ok())
            .is_some_and(|t| t.contains("[store]"));
        let data = (!own_store).then(|| {
            let dir = TempDir::new("edge-ws-test-data");
            cmd.arg("--data-dir").arg(dir.path());
            dir
        });
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn edge-ws");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stderr for the server's whole life (a full pipe would block its logs).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut api = None;
        let found = loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    if let Some(rest) = line.split("HTTP API on http://").nth(1) {
                        api = rest.split('/').next().and_then(|a| a.parse().ok());
                    }
                    if let Some(rest) = line.split("listening on ws://").nth(1) {
                        break rest
                            .split(|c: char| c == '"' || c.is_whitespace())
                            .next()
                            .and_then(|a| a.parse().ok());
                    }
                }
                // stderr closed (it exited) or no address in time.
                Err(_) => break None,
            }
        };
        match found {
            Some(addr) => Some(Server {
                child,
                addr,
                api,
                log: rx,
                data,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// SIGKILL, and wait for it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
