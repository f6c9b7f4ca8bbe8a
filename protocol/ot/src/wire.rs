//! ot.js's JSON wire form: an operation is an array of components, a positive integer for a
//! retain, a string for an insert, a negative integer for a delete.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::{self, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::operation::{Component, TextOperation};
use crate::{OtError, MAX_LEN};

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Retain(n) => serializer.serialize_u64(wire_count::<S::Error>(*n)?),
            Self::Insert(s) => serializer.serialize_str(s),
            // `wire_count` caps the count at 2^53 - 1, so the negation cannot overflow.
            Self::Delete(n) => serializer.serialize_i64(-(wire_count::<S::Error>(*n)? as i64)),
        }
    }
}

/// A count as it goes on the wire; components above [`MAX_LEN`] cannot be part of an
/// operation and would not be exact in JavaScript.
fn wire_count<E: ser::Error>(n: usize) -> Result<u64, E> {
    if n > MAX_LEN {
        return Err(E::custom(format_args!(
            "component count {n} exceeds the maximum of {MAX_LEN}"
        )));
    }
    Ok(n as u64)
}

impl Serialize for TextOperation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.ops().len()))?;
        for c in self.ops() {
            seq.serialize_element(c)?;
        }
        seq.end()
    }
}

struct ComponentVisitor;

const EXPECTING: &str =
    "an operation component: a positive integer (retain), a string (insert) or a negative \
     integer (delete)";

impl<'de> Visitor<'de> for ComponentVisitor {
    type Value = Component;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Component, E> {
        Ok(Component::Retain(count(v)?))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Component, E> {
        if v >= 0 {
            return self.visit_u64(v.unsigned_abs());
        }
        Ok(Component::Delete(count(v.unsigned_abs())?))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Component, E> {
        Ok(Component::Insert(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Component, E> {
        Ok(Component::Insert(v))
    }
}

/// A retain or delete count: nonzero and exact in JavaScript.
fn count<E: de::Error>(v: u64) -> Result<usize, E> {
    if v == 0 {
        return Err(E::custom(
            "0 is not an operation component (neither a retain nor a delete)",
        ));
    }
    match usize::try_from(v) {
        Ok(n) if n <= MAX_LEN => Ok(n),
        _ => Err(E::custom(format_args!(
            "component count {v} exceeds the maximum of {MAX_LEN}"
        ))),
    }
}

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ComponentVisitor)
    }
}

struct OperationVisitor;

impl<'de> Visitor<'de> for OperationVisitor {
    type Value = TextOperation;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an operation: an array of components (positive integer, string, negative integer)",
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextOperation, A::Error> {
        // Do not trust the hint for the allocation beyond a sane size.
        let mut op = TextOperation::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(c) = seq.next_element::<Component>()? {
            op.try_push(c).map_err(de::Error::custom)?;
        }
        Ok(op)
    }
}

/// Unnormalized input is accepted and normalized, as ot.js's `fromJSON` does (`[2,-1,-1,"x"]`
/// becomes `[2,"x",-2]`); empty strings are dropped. Zero, fractions, `null`, objects, nested
/// arrays and counts above [`MAX_LEN`] are errors.
impl<'de> Deserialize<'de> for TextOperation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(OperationVisitor)
    }
}

impl TextOperation {
    /// ot.js's JSON form, e.g. `[1,"abc",-2]` (same bytes as `serde_json::to_string`).
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(2 + self.ops().len() * 8);
        out.push('[');
        for (i, c) in self.ops().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match c {
                Component::Retain(n) => push_int(&mut out, *n, false),
                Component::Insert(s) => push_json_string(&mut out, s),
                Component::Delete(n) => push_int(&mut out, *n, true),
            }
        }
        out.push(']');
        out
    }

    /// Parses ot.js's JSON form, normalizing as ot.js's `fromJSON` does.
    ///
    /// # Errors
    ///
    /// [`OtError::Malformed`], with the parser's message and position, for anything that is not
    /// an array of nonzero integers and strings, or whose lengths exceed [`MAX_LEN`].
    ///
    /// ```
    /// use edge_ws_ot::{OtError, TextOperation};
    ///
    /// let op = TextOperation::from_json(r#"[2,-1,-1,"cde"]"#).unwrap();
    /// assert_eq!(op.to_json(), r#"[2,"cde",-2]"#);
    /// assert!(matches!(TextOperation::from_json("[0]"), Err(OtError::Malformed { .. })));
    /// assert!(matches!(TextOperation::from_json("[1.5]"), Err(OtError::Malformed { .. })));
    /// ```
    pub fn from_json(json: &str) -> Result<Self, OtError> {
        serde_json::from_str(json).map_err(|e| OtError::Malformed {
            message: e.to_string(),
        })
    }
}

fn push_int(out: &mut String, n: usize, negative: bool) {
    if negative {
        out.push('-');
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

/// A JSON string literal, escaped exactly as `serde_json` escapes it.
fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            0x00..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}
