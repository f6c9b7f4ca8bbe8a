//! Pool acquire + release, uncontended: one task, one idle connection to an edge-ws engine
//! on 127.0.0.1, no validation. Each iteration is `acquire().await` then dropping the guard.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edge_ws::{Config, Cores, Engine, Handler, Message, Socket};
use edge_ws_client::{Backends, Client, Pool};

struct Quiet;

impl Handler for Quiet {
    fn on_message(&mut self, _socket: &mut Socket<'_, '_>, _message: Message) {}
}

fn engine() -> Engine {
    let mut c = Config::default();
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.cores = Cores::Count(1);
    c.pin = false;
    Engine::builder()
        .config(c)
        .build(|_| Quiet)
        .expect("engine starts")
}

fn acquire_release(c: &mut Criterion) {
    let engine = engine();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let backends = Backends::builder()
            .client(Client::builder().keepalive(None, Duration::from_secs(10)))
            .url(format!("ws://{}/", engine.local_addr()))
            .unwrap()
            .build()
            .unwrap();
        let pool = Pool::builder(backends)
            .min_connections(1)
            .max_connections(1)
            .maintenance_interval(None)
            .build()
            .unwrap();
        pool.fill().await.unwrap();
        pool
    });
    c.bench_function("pool acquire + release (uncontended)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let conn = pool.acquire().await.unwrap();
                    drop(std::hint::black_box(conn));
                }
                start.elapsed()
            })
        })
    });
    c.bench_function("pool try_acquire + release (uncontended)", |b| {
        b.iter(|| drop(std::hint::black_box(pool.try_acquire().unwrap())))
    });
    assert_eq!(pool.stats().total_created, 1);
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
