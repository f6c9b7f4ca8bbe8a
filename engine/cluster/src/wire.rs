//! What the broker puts on Redis: key and channel names, and the message formats.
//!
//! A plain publication is `P`, the publishing node's id (8 bytes, little endian), the kind
//! (`t` text, `b` binary) and the payload. A stream publication is made by the append script:
//! `S<offset>:<epoch>:<timestamp_ms>:<kind>:` and the payload. Payloads are bytes; nothing is
//! escaped.
// Without the `redis` feature only `user_channel` is used.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use bytes::Bytes;
use edge_ws::broker::BrokerEntry;
use edge_ws::MessageKind;

/// The channel that carries what is sent to `user` on any node: a connection of the user
/// subscribes to it, and a send to the user is a publish to it.
pub fn user_channel(user: &str) -> String {
    format!("user#{user}")
}

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

    /// The hash of a channel's presence members' infos.
    pub(crate) fn presence_info(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:ph", self.prefix)
    }

    /// The Redis stream holding a channel's kept publications (ids `<offset>-0`).
    pub(crate) fn history(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:hist", self.prefix)
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
        let n = Names::new("ew");
        assert_eq!(n.channel_of(&n.channel("a:b")), Some("a:b"));
        assert_eq!(n.channel_of(&n.all()), None);
        assert_eq!(n.channel_of("other:c:x"), None);
        assert_eq!(n.meta("x"), "ew:{x}:meta");
        assert_eq!(user_channel("u1"), "user#u1");
    }
}
