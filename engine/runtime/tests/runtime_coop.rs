//! The COOP_TASKRUN fallback ring (forced with `EDGE_WS_URING_COOP=1`) carries the same traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_ws_runtime::{ConnId, CoreWaker, Io, Runtime, RuntimeConfig, Service};

struct Echo;
impl Service for Echo {
    fn on_open(&mut self, _: &mut Io<'_>, _: ConnId, _: SocketAddr) {}
    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
        io.send(id, Bytes::copy_from_slice(data));
    }
    fn on_close(&mut self, _: &mut Io<'_>, _: ConnId) {}
    fn on_tick(&mut self, _: &mut Io<'_>, _: Instant) {}
}

#[test]
fn coop_taskrun_fallback_echoes() {
    std::env::set_var("EDGE_WS_URING_COOP", "1");
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .take(2)
        .collect();
    let cfg = RuntimeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        cores,
        ..Default::default()
    };
    let rt = Runtime::start(cfg, |_, _: Arc<[CoreWaker]>| Echo).unwrap();
    for s in rt.stats().iter() {
        assert_eq!(s.ring_defer_taskrun.load(Ordering::Relaxed), 0);
    }
    let addr = rt.local_addr();
    std::thread::scope(|sc| {
        for c in 0..20u8 {
            sc.spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for i in 0..200u32 {
                    let msg = [c, (i & 0xff) as u8, 0x5a, (i >> 8) as u8];
                    s.write_all(&msg).unwrap();
                    let mut got = [0u8; 4];
                    s.read_exact(&mut got).unwrap();
                    assert_eq!(got, msg);
                }
            });
        }
    });
    rt.shutdown();
    rt.join().unwrap();
}
