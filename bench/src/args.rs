//! A tiny command-line parser: `--key value`, `--key=value`, bare `--flag`s and positionals.

use std::str::FromStr;
use std::time::Duration;

/// One parsed argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `--name` (the value, if any, is fetched with [`Args::value`]).
    Long(String),
    /// A bare word.
    Positional(String),
}

/// A cursor over the command line.
#[derive(Debug)]
pub struct Args {
    items: Vec<String>,
    pos: usize,
    pending: Option<String>,
    last: String,
}

impl Args {
    /// The process arguments, program name skipped.
    pub fn from_env() -> Args {
        Args::new(std::env::args().skip(1).collect())
    }

    /// Arguments from a list (for tests).
    pub fn new(items: Vec<String>) -> Args {
        Args {
            items,
            pos: 0,
            pending: None,
            last: String::new(),
        }
    }

    /// The next argument, or `None` at the end.
    pub fn next_arg(&mut self) -> Result<Option<Arg>, String> {
        if let Some(v) = self.pending.take() {
            return Err(format!("--{} takes no value (got {v:?})", self.last));
        }
        let Some(item) = self.items.get(self.pos).cloned() else {
            return Ok(None);
        };
        self.pos += 1;
        if let Some(long) = item.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            };
            self.pending = val;
            self.last = name.clone();
            Ok(Some(Arg::Long(name)))
        } else if item == "-h" {
            self.last = "help".into();
            Ok(Some(Arg::Long("help".into())))
        } else {
            Ok(Some(Arg::Positional(item)))
        }
    }

    /// The value of the option just returned.
    pub fn value(&mut self) -> Result<String, String> {
        if let Some(v) = self.pending.take() {
            return Ok(v);
        }
        let v = self
            .items
            .get(self.pos)
            .cloned()
            .ok_or_else(|| format!("--{} needs a value", self.last))?;
        self.pos += 1;
        Ok(v)
    }

    /// The value of the option just returned, parsed.
    pub fn parse<T: FromStr>(&mut self) -> Result<T, String> {
        let v = self.value()?;
        v.parse()
            .map_err(|_| format!("--{}: cannot parse {v:?}", self.last))
    }

    /// The value of the option just returned, as a duration (`5s`, `500ms`, `2m`, `1.5s`).
    pub fn duration(&mut self) -> Result<Duration, String> {
        let v = self.value()?;
        parse_duration(&v).ok_or_else(|| format!("--{}: bad duration {v:?}", self.last))
    }

    /// The value of the option just returned, as a size (`64`, `4k`, `4KiB`, `1m`).
    pub fn size(&mut self) -> Result<usize, String> {
        let v = self.value()?;
        parse_size(&v).ok_or_else(|| format!("--{}: bad size {v:?}", self.last))
    }
}

/// Parses `5s`, `500ms`, `2m`, `1.5s`, `100us`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        _ => return None,
    };
    if !(0.0..=1e7).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// Parses `64`, `4k`/`4K`/`4KiB`/`4kb`, `1m`/`1MiB`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mul = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixed_forms() {
        let mut a = Args::new(
            [
                "echo",
                "--conns",
                "10",
                "--size=4k",
                "--raw",
                "--warmup",
                "500ms",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        assert_eq!(a.next_arg().unwrap(), Some(Arg::Positional("echo".into())));
        assert_eq!(a.next_arg().unwrap(), Some(Arg::Long("conns".into())));
        assert_eq!(a.parse::<usize>().unwrap(), 10);
        assert_eq!(a.next_arg().unwrap(), Some(Arg::Long("size".into())));
        assert_eq!(a.size().unwrap(), 4096);
        assert_eq!(a.next_arg().unwrap(), Some(Arg::Long("raw".into())));
        assert_eq!(a.next_arg().unwrap(), Some(Arg::Long("warmup".into())));
        assert_eq!(a.duration().unwrap(), Duration::from_millis(500));
        assert_eq!(a.next_arg().unwrap(), None);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("64"), Some(64));
    }
}
