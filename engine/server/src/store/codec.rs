//! The on-disk forms: table definitions, the channel metadata record, key prefixes.

use std::time::Duration;

use redb::TableDefinition;

use super::{Position, Retention, StoreError, Table};

/// `(channel, offset) → (timestamp_ms, payload)`.
pub(crate) const RECORDS: TableDefinition<(&str, u64), (u64, &[u8])> =
    TableDefinition::new("channel_records");
/// `channel → Meta` (see [`Meta::encode`]).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("channel_meta");

/// The table of a keyed [`Table`]: `key → value`, both bytes.
pub(crate) fn keyed(
    table: Table,
) -> Option<TableDefinition<'static, &'static [u8], &'static [u8]>> {
    table.is_keyed().then(|| TableDefinition::new(table.name()))
}

/// One channel's stream: its epoch and the offsets it holds (`first > last` when retention
/// removed every record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stream {
    pub(crate) epoch: u64,
    pub(crate) first: u64,
    pub(crate) last: u64,
}

impl Stream {
    pub(crate) fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            first_offset: self.first,
            last_offset: self.last,
        }
    }
}

/// What the store keeps per channel: the stream (none before the first append) and the
/// retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub(crate) stream: Option<Stream>,
    pub(crate) retention: Retention,
}

const META_VERSION: u8 = 1;
const META_LEN: usize = 2 + 5 * 8;
const HAS_STREAM: u8 = 1;
const HAS_MAX_LEN: u8 = 2;
const HAS_TTL: u8 = 4;

impl Meta {
    /// Version, flags, then epoch, first, last, max_len, ttl_ms as little-endian u64s.
    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        let s = self.stream.unwrap_or(Stream {
            epoch: 0,
            first: 0,
            last: 0,
        });
        let mut flags = 0;
        if self.stream.is_some() {
            flags |= HAS_STREAM;
        }
        if self.retention.max_len.is_some() {
            flags |= HAS_MAX_LEN;
        }
        if self.retention.ttl.is_some() {
            flags |= HAS_TTL;
        }
        out[0] = META_VERSION;
        out[1] = flags;
        let ttl_ms = self.retention.ttl.map_or(0, duration_ms);
        let fields = [
            s.epoch,
            s.first,
            s.last,
            self.retention.max_len.unwrap_or(0),
            ttl_ms,
        ];
        for (i, v) in fields.iter().enumerate() {
            out[2 + 8 * i..10 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(channel: &str, b: &[u8]) -> Result<Meta, StoreError> {
        if b.len() != META_LEN || b[0] != META_VERSION {
            return Err(StoreError::Corrupted(format!(
                "metadata of channel {channel:?}: {} bytes, version {:?}",
                b.len(),
                b.first()
            )));
        }
        let flags = b[1];
        let field = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[2 + 8 * i..10 + 8 * i]);
            u64::from_le_bytes(w)
        };
        Ok(Meta {
            stream: (flags & HAS_STREAM != 0).then(|| Stream {
                epoch: field(0),
                first: field(1),
                last: field(2),
            }),
            retention: Retention {
                max_len: (flags & HAS_MAX_LEN != 0).then(|| field(3)),
                ttl: (flags & HAS_TTL != 0).then(|| Duration::from_millis(field(4))),
            },
        })
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The smallest key greater than every key starting with `prefix`, `None` if there is none
/// (an empty prefix, or one of only `0xff` bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let cases = [
            Meta::default(),
            Meta {
                stream: Some(Stream {
                    epoch: u64::MAX,
                    first: 7,
                    last: 6,
                }),
                retention: Retention::default()
                    .max_len(0)
                    .ttl(Duration::from_millis(1500)),
            },
            Meta {
                stream: Some(Stream {
                    epoch: 1,
                    first: 1,
                    last: 100,
                }),
                retention: Retention::default().max_len(10),
            },
        ];
        for m in cases {
            assert_eq!(Meta::decode("c", &m.encode()).unwrap(), m);
        }
        assert!(matches!(
            Meta::decode("c", &[2; META_LEN]),
            Err(StoreError::Corrupted(_))
        ));
        assert!(Meta::decode("c", &[1, 0]).is_err());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
