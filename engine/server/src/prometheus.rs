//! The product's `GET /metrics`: the engine's counters (totals and per core) plus what the
//! server layer adds: upgrades refused by reason, route errors by kind, users online, the
//! store's counters and commit/fsync latency histograms, notifications, documents, the HTTP
//! API and, in a cluster, the broker's state and the cluster paths' counters. Prometheus text
//! format 0.0.4.

use std::fmt::Write as _;

use edge_ws::broker::BrokerState;

use crate::Manager;

/// Per-core series of the engine counters an operator watches per core (load balance across
/// the cores, a stuck core).
const PER_CORE: &[&str] = &[
    "opened",
    "closed",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "deliveries",
    "spills",
    "slow_consumer_drops",
    "slow_consumer_closes",
    "protocol_errors",
];

/// What the server layer reports beside the manager (all optional).
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct Extra {
    /// The store, when one is open.
    #[cfg(feature = "store")]
    pub store: Option<crate::store::StoreHandle>,
    /// The HTTP API's counters, when it runs.
    pub http_api: Option<crate::http_api::HttpApiStats>,
}

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn series(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole metrics page: the engine's text, then the server's series.
pub fn render(manager: &Manager, extra: &Extra) -> String {
    let mut out = manager.engine().map(|h| h.prometheus()).unwrap_or_default();
    if let Some(h) = manager.engine() {
        for name in PER_CORE {
            let metric = format!("edge_ws_core_{name}");
            let mut header = false;
            for core in 0..h.cores() {
                let Some(m) = h.core_metrics(core) else {
                    continue;
                };
                let Some((_, v)) = m.fields().into_iter().find(|(n, _)| n == name) else {
                    continue;
                };
                if !header {
                    series(&mut out, &metric, "counter", &format!("{name} on one core"));
                    header = true;
                }
                let _ = writeln!(out, "{metric}{{core=\"{core}\"}} {v}");
            }
        }
    }
    if let Some((state, _)) = manager.engine().and_then(|h| h.broker_state()) {
        // Beside the engine's `edge_ws_broker_*` counters and `edge_ws_broker_up`: the state
        // as a label, so a dashboard tells "connecting" from "down".
        series(
            &mut out,
            "edge_ws_broker_state",
            "gauge",
            "the cluster broker's state (1 for the current one)",
        );
        for st in [BrokerState::Connecting, BrokerState::Up, BrokerState::Down] {
            let _ = writeln!(
                out,
                "edge_ws_broker_state{{state=\"{}\"}} {}",
                st.as_str(),
                u8::from(st == state)
            );
        }
    }
    if let Some(c) = manager.cluster_stats() {
        for (name, help, v) in [
            (
                "user_commands_sent",
                "sends and closes for a user handed to the broker for the other nodes",
                c.user_commands_sent,
            ),
            (
                "user_commands_received",
                "sends and closes for a user received from other nodes",
                c.user_commands_received,
            ),
            (
                "presence_errors",
                "cluster presence reads that failed",
                c.presence_errors,
            ),
            (
                "malformed",
                "unreadable user-channel messages or presence entries",
                c.malformed,
            ),
            (
                "unlistenable_users",
                "users whose id cannot name a channel (no sends from other nodes)",
                c.unlistenable_users,
            ),
        ] {
            let metric = format!("edge_ws_cluster_{name}_total");
            series(&mut out, &metric, "counter", help);
            let _ = writeln!(out, "{metric} {v}");
        }
    }
    let s = manager.stats();
    series(
        &mut out,
        "edge_ws_manager_active",
        "gauge",
        "open manager connections",
    );
    let _ = writeln!(out, "edge_ws_manager_active {}", s.active);
    series(
        &mut out,
        "edge_ws_manager_pending",
        "gauge",
        "upgrades being authenticated",
    );
    let _ = writeln!(out, "edge_ws_manager_pending {}", s.pending);
    series(
        &mut out,
        "edge_ws_users_online",
        "gauge",
        "users with an open connection",
    );
    let _ = writeln!(out, "edge_ws_users_online {}", manager.users_online());
    series(
        &mut out,
        "edge_ws_upgrades_rejected_total",
        "counter",
        "upgrades refused, by reason",
    );
    for (reason, n) in &s.rejections {
        let _ = writeln!(
            out,
            "edge_ws_upgrades_rejected_total{{reason=\"{}\"}} {n}",
            snake(&format!("{reason:?}"))
        );
    }
    series(
        &mut out,
        "edge_ws_route_errors_total",
        "counter",
        "messages answered with an error, by kind",
    );
    for (kind, n) in &s.errors {
        let _ = writeln!(
            out,
            "edge_ws_route_errors_total{{kind=\"{}\"}} {n}",
            snake(&format!("{kind:?}"))
        );
    }
    series(
        &mut out,
        "edge_ws_abuse_closes_total",
        "counter",
        "connections closed for rate-limit abuse",
    );
    let _ = writeln!(out, "edge_ws_abuse_closes_total {}", s.abuse_closes);
    #[cfg(feature = "store")]
    {
        if let Some(store) = &extra.store {
            store_series(&mut out, store);
        }
        if let Some(n) = manager.notifications() {
            let n = n.stats();
            for (name, v) in [
                ("sent", n.sent),
                ("delivered", n.delivered),
                ("evicted", n.evicted),
                ("expired", n.expired),
                ("store_errors", n.store_errors),
            ] {
                let metric = format!("edge_ws_notifications_{name}_total");
                series(
                    &mut out,
                    &metric,
                    "counter",
                    &format!("notifications {name}"),
                );
                let _ = writeln!(out, "{metric} {v}");
            }
        }
        if let Some(d) = manager.documents() {
            let d = d.stats();
            for (name, v) in [
                ("applied", d.applied),
                ("transformed", d.transformed),
                ("refused", d.refused),
                ("snapshots", d.snapshots),
                ("store_errors", d.store_errors),
                ("conflicts", d.conflicts),
            ] {
                let metric = format!("edge_ws_documents_{name}_total");
                series(
                    &mut out,
                    &metric,
                    "counter",
                    &format!("document operations {name}"),
                );
                let _ = writeln!(out, "{metric} {v}");
            }
        }
    }
    if let Some(a) = extra.http_api {
        series(
            &mut out,
            "edge_ws_http_api_requests_total",
            "counter",
            "HTTP API requests by outcome",
        );
        for (outcome, v) in [
            ("ok", a.ok),
            ("unauthorized", a.unauthorized),
            ("error", a.errors),
        ] {
            let _ = writeln!(
                out,
                "edge_ws_http_api_requests_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        series(
            &mut out,
            "edge_ws_http_api_refused_total",
            "counter",
            "HTTP API connections refused at the limit",
        );
        let _ = writeln!(out, "edge_ws_http_api_refused_total {}", a.refused);
    }
    out
}

#[cfg(feature = "store")]
fn store_series(out: &mut String, store: &crate::store::StoreHandle) {
    let s = store.stats();
    for (name, v) in [
        ("commits", s.commits),
        ("failed_commits", s.failed_commits),
        ("records", s.records),
        ("failed_records", s.failed_records),
        ("writes", s.writes),
        ("failed_writes", s.failed_writes),
        ("bytes", s.bytes),
        ("trimmed", s.trimmed),
        ("queue_full", s.queue_full),
        ("io_errors", s.io_errors),
        ("reopens", s.reopens),
    ] {
        let metric = format!("edge_ws_store_{name}_total");
        series(out, &metric, "counter", &format!("store {name}"));
        let _ = writeln!(out, "{metric} {v}");
    }
    series(
        out,
        "edge_ws_store_queue_depth",
        "gauge",
        "writes queued for the store",
    );
    let _ = writeln!(out, "edge_ws_store_queue_depth {}", s.queue_depth);
    for (name, h) in [("commit", &s.commit_latency), ("fsync", &s.fsync_latency)] {
        let metric = format!("edge_ws_store_{name}_seconds");
        series(out, &metric, "histogram", &format!("store {name} time"));
        let mut cumulative = 0u64;
        let mut sum_us = 0u128;
        for (i, &n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let (lo, hi) = crate::store::bucket_bounds(i);
            sum_us += u128::from(n) * u128::from(lo.midpoint(hi));
            // Only the bounds where the count changes, plus +Inf: a compact page.
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{metric}_bucket{{le=\"{:.6}\"}} {cumulative}",
                    hi as f64 / 1e6
                );
            }
        }
        let _ = writeln!(out, "{metric}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{metric}_sum {:.6}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{metric}_count {}", h.count);
    }
}
