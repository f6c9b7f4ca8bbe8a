//! One result: a JSON line on stdout and a human summary on stderr.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{Config, CpuWindow};

/// A JSON value (numbers, strings, booleans, null).
#[derive(Debug, Clone)]
pub enum Val {
    /// A string.
    Str(String),
    /// An unsigned integer.
    U(u64),
    /// A float (non-finite becomes null).
    F(f64),
    /// A boolean.
    B(bool),
    /// null.
    Null,
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Str(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Str(s)
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::U(v)
    }
}
impl From<usize> for Val {
    fn from(v: usize) -> Val {
        Val::U(v as u64)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::U(u64::from(v))
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::F(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::B(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// An ordered set of result fields.
#[derive(Debug, Clone)]
pub struct Report {
    fields: Vec<(&'static str, Val)>,
    summary: String,
    fatal: Option<String>,
    errors: u64,
}

impl Report {
    /// A report carrying the run's identity (mode, label, scenario, shape).
    pub fn new(c: &Config) -> Report {
        let mut r = Report {
            fields: Vec::new(),
            summary: String::new(),
            fatal: None,
            errors: 0,
        };
        r.set("mode", c.mode.name());
        r.set("label", c.label.as_str());
        r.set("scenario", c.scenario.as_str());
        r.set("rep", c.rep);
        r.set("conns", c.conns);
        r.set("depth", c.depth);
        r.set("size", c.size);
        r.set("threads", c.threads);
        r.set("raw", c.raw);
        r
    }

    /// Sets (or replaces) a field.
    pub fn set(&mut self, k: &'static str, v: impl Into<Val>) {
        let v = v.into();
        if let Some(slot) = self.fields.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            self.fields.push((k, v));
        }
    }

    /// Marks the run failed with a reason (an `error` field, exit code 1).
    pub fn fatal(&mut self, msg: impl Into<String>) {
        let m = msg.into();
        self.set("error", m.as_str());
        self.fatal = Some(m);
    }

    /// Records the error count (also sets the `errors` field).
    pub fn errors(&mut self, n: u64) {
        self.errors = n;
        self.set("errors", n);
    }

    /// Whether the run failed (fatal error or counted errors).
    pub fn failed(&self) -> bool {
        self.fatal.is_some() || self.errors > 0
    }

    /// Standard throughput, latency and CPU fields for `msgs` messages of `size` bytes.
    pub fn throughput(&mut self, msgs: u64, size: usize, cpu: &CpuWindow, hist: &Histogram<u64>) {
        let secs = cpu.wall_ns as f64 / 1e9;
        let rate = if secs > 0.0 { msgs as f64 / secs } else { 0.0 };
        self.set("window_s", round(secs, 3));
        self.set("msgs", msgs);
        self.set("msgs_per_s", round(rate, 1));
        self.set("mb_per_s", round(rate * size as f64 / 1e6, 2));
        self.latency(hist);
        self.cpu(msgs, cpu);
    }

    /// Latency percentiles (µs) from a nanosecond histogram.
    pub fn latency(&mut self, hist: &Histogram<u64>) {
        let q = |p: f64| {
            if hist.is_empty() {
                Val::Null
            } else {
                Val::F(round(hist.value_at_quantile(p) as f64 / 1e3, 1))
            }
        };
        self.set("p50_us", q(0.50));
        self.set("p90_us", q(0.90));
        self.set("p99_us", q(0.99));
        self.set("p999_us", q(0.999));
        self.set(
            "max_us",
            if hist.is_empty() {
                Val::Null
            } else {
                Val::F(round(hist.max() as f64 / 1e3, 1))
            },
        );
    }

    /// Server and client CPU per message and utilisation over the window.
    pub fn cpu(&mut self, msgs: u64, cpu: &CpuWindow) {
        let per = |ns: u64| {
            if msgs == 0 {
                Val::Null
            } else {
                Val::F(round(ns as f64 / 1e3 / msgs as f64, 4))
            }
        };
        let util = |ns: u64| {
            if cpu.wall_ns == 0 {
                Val::Null
            } else {
                Val::F(round(ns as f64 / cpu.wall_ns as f64, 3))
            }
        };
        self.set(
            "server_cpu_us_per_msg",
            cpu.server_ns.map_or(Val::Null, per),
        );
        self.set("client_cpu_us_per_msg", per(cpu.client_ns));
        self.set("server_cpu_util", cpu.server_ns.map_or(Val::Null, util));
        self.set("client_cpu_util", util(cpu.client_ns));
        self.set("server_rss_kb", cpu.server_rss_kb);
    }

    /// Sets the one-line human summary.
    pub fn summary(&mut self, s: String) {
        self.summary = s;
    }

    fn get_f(&self, k: &str) -> Option<f64> {
        self.fields
            .iter()
            .find(|(n, _)| *n == k)
            .and_then(|(_, v)| match v {
                Val::F(f) => Some(*f),
                Val::U(u) => Some(*u as f64),
                _ => None,
            })
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{k}\":");
            write_val(&mut s, v);
        }
        s.push('}');
        s
    }

    /// Prints the JSON line (stdout) and the summary (stderr).
    pub fn emit(&self) {
        println!("{}", self.to_json());
        let mut line = String::new();
        let label = self
            .fields
            .iter()
            .find(|(n, _)| *n == "label")
            .map(|(_, v)| match v {
                Val::Str(s) => s.clone(),
                _ => String::new(),
            })
            .unwrap_or_default();
        let scen = self
            .fields
            .iter()
            .find(|(n, _)| *n == "scenario")
            .map(|(_, v)| match v {
                Val::Str(s) => s.clone(),
                _ => String::new(),
            })
            .unwrap_or_default();
        let _ = write!(line, "[{label} {scen}] ");
        if let Some(f) = &self.fatal {
            let _ = write!(line, "FAILED: {f}; ");
        }
        if self.summary.is_empty() {
            if let Some(r) = self.get_f("msgs_per_s") {
                let _ = write!(line, "{r:.0} msg/s ");
            }
        } else {
            line.push_str(&self.summary);
        }
        eprintln!("{line}");
    }
}

fn write_val(s: &mut String, v: &Val) {
    match v {
        Val::Str(t) => {
            s.push('"');
            for c in t.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '\n' => s.push_str("\\n"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(s, "\\u{:04x}", c as u32);
                    }
                    c => s.push(c),
                }
            }
            s.push('"');
        }
        Val::U(u) => {
            let _ = write!(s, "{u}");
        }
        Val::F(f) => {
            if f.is_finite() {
                let _ = write!(s, "{f}");
            } else {
                s.push_str("null");
            }
        }
        Val::B(b) => s.push_str(if *b { "true" } else { "false" }),
        Val::Null => s.push_str("null"),
    }
}

/// Rounds to `digits` decimals.
pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// A compact latency/CPU summary for stderr.
pub fn fmt_summary(
    what: &str,
    rate: f64,
    hist: &Histogram<u64>,
    cpu: &CpuWindow,
    msgs: u64,
    errors: u64,
    closes: u64,
) -> String {
    let us = |p: f64| hist.value_at_quantile(p) as f64 / 1e3;
    let per = |ns: u64| {
        if msgs == 0 {
            f64::NAN
        } else {
            ns as f64 / 1e3 / msgs as f64
        }
    };
    let mut s = format!("{rate:.0} {what}/s");
    if !hist.is_empty() {
        let _ = write!(
            s,
            " p50 {:.0}µs p99 {:.0}µs p99.9 {:.0}µs",
            us(0.5),
            us(0.99),
            us(0.999)
        );
    }
    if let Some(sn) = cpu.server_ns {
        let _ = write!(
            s,
            " | server {:.3} µs/msg ({:.0}%)",
            per(sn),
            sn as f64 * 100.0 / cpu.wall_ns.max(1) as f64
        );
    }
    let _ = write!(
        s,
        " | client {:.3} µs/msg ({:.0}%)",
        per(cpu.client_ns),
        cpu.client_ns as f64 * 100.0 / cpu.wall_ns.max(1) as f64
    );
    let _ = write!(s, " | errors {errors} closes {closes}");
    s
}
