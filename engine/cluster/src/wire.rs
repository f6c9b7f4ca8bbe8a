//! What the broker puts on Redis: key and channel names, and the message formats.
//!
//! A plain publication is `P`, the publishing node's id (8 bytes, little endian), the kind
//! (`t` text, `b` binary) and the payload. A stream publication is made by the append script:
//! `S<offset>:<epoch>:<timestamp_ms>:<kind>:` and the payload. Payloads are bytes; nothing is
//! escaped.
// Without the `redis` feature none of it is used.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use bytes::Bytes;
use edge_ws::broker::BrokerEntry;
use edge_ws::MessageKind;

/// The kind as one byte.
pub(crate) fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => b't',
        _ => b'b',
    }
}

pub(crate) fn kind_of(b: u8) -> Option<MessageKind> {
    match b {
        b't' => Some(MessageKind::Text),
        b'b' => Some(MessageKind::Binary),
        _ => None,
    }
}

/// A plain publication from node `node`.
pub(crate) fn plain(node: u64, kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + payload.len());
    v.push(b'P');
    v.extend_from_slice(&node.to_le_bytes());
    v.push(kind_byte(kind));
    v.extend_from_slice(payload);
    v
}

/// A message read from a Redis channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    Plain {
        node: u64,
        kind: MessageKind,
        payload: Bytes,
    },
    Stream {
        entry: BrokerEntry,
        epoch: u64,
    },
}

/// Parses a message; `None` if it is malformed.
pub(crate) fn parse(msg: Bytes) -> Option<Inbound> {
    match msg.first()? {
        b'P' if msg.len() >= 10 => {
            let node = u64::from_le_bytes(msg[1..9].try_into().ok()?);
            let kind = kind_of(msg[9])?;
            Some(Inbound::Plain {
                node,
                kind,
                payload: msg.slice(10..),
            })
        }
        b'S' => {
            let mut fields = [0u64; 3];
            let mut at = 1;
            for f in &mut fields {
                let end = at + msg[at..].iter().position(|&b| b == b':')?;
                *f = std::str::from_utf8(&msg[at..end]).ok()?.parse().ok()?;
                at = end + 1;
            }
            let kind = kind_of(*msg.get(at)?)?;
            if msg.get(at + 1) != Some(&b':') {
                return None;
            }
            Some(Inbound::Stream {
                entry: BrokerEntry {
                    offset: fields[0],
                    timestamp_ms: fields[2],
                    kind,
                    payload: msg.slice(at + 2..),
                },
                epoch: fields[1],
            })
        }
        _ => None,
    }
}

/// A RESP value as a subscription connection receives it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resp {
    Simple(Bytes),
    Error(Bytes),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Resp>>),
}

/// Most elements or bytes one value may declare (a guard against a corrupt stream).
const RESP_MAX: usize = 512 << 20;

/// Parses the RESP value at `data[at..]`: `Ok(Some((value, next)))`, `Ok(None)` when it is
/// not complete yet, `Err` on bytes that are not RESP. Bulk strings are slices of `data`.
pub(crate) fn resp(data: &Bytes, at: usize) -> Result<Option<(Resp, usize)>, String> {
    let Some(kind) = data.get(at) else {
        return Ok(None);
    };
    let Some(eol) = data[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &data[at + 1..at + eol];
    let next = at + eol + 2;
    let int = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad RESP integer {line:?}"))
    };
    match kind {
        b'+' => Ok(Some((Resp::Simple(data.slice(at + 1..at + eol)), next))),
        b'-' => Ok(Some((Resp::Error(data.slice(at + 1..at + eol)), next))),
        b':' => Ok(Some((Resp::Int(int()?), next))),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            let n = n as usize;
            if n > RESP_MAX {
                return Err(format!("RESP bulk string of {n} bytes"));
            }
            if data.len() < next + n + 2 {
                return Ok(None);
            }
            if &data[next + n..next + n + 2] != b"\r\n" {
                return Err("RESP bulk string without its CRLF".into());
            }
            Ok(Some((
                Resp::Bulk(Some(data.slice(next..next + n))),
                next + n + 2,
            )))
        }
        b'*' | b'>' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Resp::Array(None), next)));
            }
            if n as usize > RESP_MAX {
                return Err(format!("RESP array of {n} elements"));
            }
            let mut items = Vec::with_capacity((n as usize).min(16));
            let mut at = next;
            for _ in 0..n {
                match resp(data, at)? {
                    Some((v, after)) => {
                        items.push(v);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), at)))
        }
        other => Err(format!("not RESP: first byte {other:#04x}")),
    }
}

/// Key and channel names under one prefix. Per-channel keys carry the channel in a hash tag
/// (`{...}`), so a stream's keys live on one Redis Cluster slot.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The Redis channel of engine channel `channel`.
    pub(crate) fn channel(&self, channel: &str) -> String {
        format!("{}:c:{channel}", self.prefix)
    }

    /// The engine channel of Redis channel `redis`, if it is one of ours.
    pub(crate) fn channel_of<'a>(&self, redis: &'a str) -> Option<&'a str> {
        redis
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":c:")
    }

    /// The Redis channel of broadcasts to every connection.
    pub(crate) fn all(&self) -> String {
        format!("{}:all", self.prefix)
    }

    /// The hash holding a stream's offset (`o`) and epoch (`e`).
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }

    /// The sorted set of a channel's presence members, scored by expiry (ms).
    pub(crate) fn presence(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:pz", self.prefix)
    }

    /// The key remembering a stream publish's idempotency key (its value: the offset).
    pub(crate) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:idem:{key}", self.prefix)
    }

    /// The hash of a channel's presence members' infos.
    pub(crate) fn presence_info(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:ph", self.prefix)
    }

    /// The Redis stream holding a channel's kept publications (ids `<offset>-0`).
    pub(crate) fn history(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:hist", self.prefix)
    }

    /// A sequenced log's entries (a stream whose ids are the sequence numbers).
    pub(crate) fn log(&self, name: &str) -> String {
        format!("{}:{{{name}}}:log", self.prefix)
    }

    /// A sequenced log's last sequence number (`last`) and snapshot (`r`, `d`).
    pub(crate) fn log_meta(&self, name: &str) -> String {
        format!("{}:{{{name}}}:logmeta", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = plain(0x0102_0304_0506_0708, MessageKind::Text, b"hi:there");
        assert_eq!(
            parse(Bytes::from(m)),
            Some(Inbound::Plain {
                node: 0x0102_0304_0506_0708,
                kind: MessageKind::Text,
                payload: Bytes::from_static(b"hi:there"),
            })
        );
        let s = Bytes::from_static(b"S42:18446744073709551615:1700000000000:b:\x00:\xff");
        assert_eq!(
            parse(s),
            Some(Inbound::Stream {
                entry: BrokerEntry {
                    offset: 42,
                    timestamp_ms: 1_700_000_000_000,
                    kind: MessageKind::Binary,
                    payload: Bytes::from_static(b"\x00:\xff"),
                },
                epoch: u64::MAX,
            })
        );
        for bad in [
            &b""[..],
            b"P123",
            b"Pabcdefghx",
            b"S1:2:3",
            b"S1:2:3:t",
            b"Sx:2:3:t:",
            b"S1:2:3:q:",
            b"Q",
        ] {
            assert_eq!(parse(Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
        // RESP as a subscription connection sends it, whole or cut anywhere.
        let stream = Bytes::from_static(
            b"*3\r\n$9\r\nsubscribe\r\n$4\r\new:c\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$4\r\new:c\r\n$5\r\na\r\nb!\r\n+OK\r\n-ERR x\r\n$-1\r\n",
        );
        let (v, at) = resp(&stream, 0).unwrap().unwrap();
        let b = |s: &'static [u8]| Resp::Bulk(Some(Bytes::from_static(s)));
        assert_eq!(
            v,
            Resp::Array(Some(vec![b(b"subscribe"), b(b"ew:c"), Resp::Int(1)]))
        );
        let (v, at) = resp(&stream, at).unwrap().unwrap();
        assert_eq!(
            v,
            Resp::Array(Some(vec![b(b"message"), b(b"ew:c"), b(b"a\r\nb!")]))
        );
        let (v, at) = resp(&stream, at).unwrap().unwrap();
        assert_eq!(v, Resp::Simple(Bytes::from_static(b"OK")));
        let (v, at) = resp(&stream, at).unwrap().unwrap();
        assert_eq!(v, Resp::Error(Bytes::from_static(b"ERR x")));
        let (v, at) = resp(&stream, at).unwrap().unwrap();
        assert_eq!((v, at), (Resp::Bulk(None), stream.len()));
        for cut in 0..stream.len() {
            let part = stream.slice(..cut);
            let mut at = 0;
            while let Some((_, next)) = resp(&part, at).unwrap() {
                at = next;
            }
            assert!(at <= cut);
        }
        assert!(resp(&Bytes::from_static(b"?x\r\n"), 0).is_err());
        assert!(resp(&Bytes::from_static(b"$3\r\nabcd\r\n"), 0).is_err());
        let n = Names::new("ew");
        assert_eq!(n.channel_of(&n.channel("a:b")), Some("a:b"));
        assert_eq!(n.channel_of(&n.all()), None);
        assert_eq!(n.channel_of("other:c:x"), None);
        assert_eq!(n.meta("x"), "ew:{x}:meta");
        assert_eq!(edge_ws::broker::user_channel("u1"), "user#u1");
    }
}
