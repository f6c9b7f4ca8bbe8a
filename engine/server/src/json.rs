//! The JSON the message path needs, without building any tree: a validating one-pass scanner
//! for the envelope object that borrows `type` and keeps `id` and `data` as raw text, and a
//! string escaper for replies.
//!
//! The scanner accepts exactly the JSON that `serde_json` accepts for the envelope (one object,
//! only whitespace around it, strings without raw control characters, escapes checked for
//! syntax as `serde_json::value::RawValue` does), except that nesting is limited to
//! [`MAX_DEPTH`] levels (the envelope included) so that a hostile message cannot exhaust the
//! stack. Escaped keys and an escaped `type` (rare) are decoded by `serde_json`.

use std::borrow::Cow;

/// Deepest nesting accepted, the envelope object included (serde_json's default limit).
pub(crate) const MAX_DEPTH: u32 = 127;

/// An envelope as scanned: `type` (`None` if absent or `null`), raw `id` and `data`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawEnvelope<'a> {
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) id: Option<&'a str>,
    pub(crate) data: Option<&'a str>,
}

/// Not a well-formed envelope (invalid JSON, not an object, a non-string `type`, a repeated
/// `type`/`id`/`data`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

type R<T> = Result<T, Invalid>;

struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Invalid)
    }

    #[inline]
    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// A string at `self.i` (on its opening quote): the range of its contents, and whether it
    /// has escapes.
    #[inline]
    fn string(&mut self) -> R<(usize, usize, bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let n = find_special(rest).ok_or(Invalid)?;
            self.i += n;
            match rest[n] {
                b'"' => {
                    self.i += 1;
                    return Ok((start, self.i - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Invalid);
                            }
                            self.i += 6;
                        }
                        _ => return Err(Invalid),
                    }
                }
                _ => return Err(Invalid), // a raw control character
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn digits(&mut self) -> R<()> {
        let n = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 {
            return Err(Invalid);
        }
        self.i += n;
        Ok(())
    }

    fn number(&mut self) -> R<()> {
        if self.b[self.i] == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return Err(Invalid),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    /// Any value at `self.i` (after whitespace); `depth` is the nesting it sits in.
    fn value(&mut self, depth: u32) -> R<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Invalid);
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    if self.peek()? != b'"' {
                        return Err(Invalid);
                    }
                    let (s, e, esc) = self.string()?;
                    if esc {
                        self.decode(s, e)?; // escapes must decode in keys
                    }
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    if self.item_end(b'}')? {
                        return Ok(());
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Invalid);
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    if self.item_end(b']')? {
                        return Ok(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Invalid),
        }
    }

    /// After an object member or array element: consumes `,` (more follow: `false`) or the
    /// closing `close` (`true`), with the whitespace around them.
    #[inline]
    fn item_end(&mut self, close: u8) -> Result<bool, Invalid> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            c if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Invalid),
        }
    }

    /// Decodes the escaped string whose contents span `s..e` (rare: keys and `type` with
    /// escapes).
    #[cold]
    fn decode(&self, s: usize, e: usize) -> R<String> {
        serde_json::from_str(&self.text[s - 1..e + 1]).map_err(|_| Invalid)
    }
}

/// The index of the first `"`, `\\` or control character in `b`, eight bytes at a time
/// (the classic "has zero byte" bit trick: a flag can only be set spuriously *above* a true
/// match, so the lowest flag is exact).
#[inline]
fn find_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let chunks = b.chunks_exact(8);
    let tail = chunks.remainder();
    for (k, chunk) in chunks.enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        let q = w ^ (ONES * u64::from(b'"'));
        let s = w ^ (ONES * u64::from(b'\\'));
        let m = ((q.wrapping_sub(ONES) & !q)
            | (s.wrapping_sub(ONES) & !s)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if m != 0 {
            return Some(k * 8 + (m.trailing_zeros() / 8) as usize);
        }
    }
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| b.len() - tail.len() + p)
}

/// Scans `text` as an envelope.
pub(crate) fn scan(text: &str) -> R<RawEnvelope<'_>> {
    let mut sc = Scan {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    let mut out = RawEnvelope {
        kind: None,
        id: None,
        data: None,
    };
    let (mut seen_type, mut seen_id, mut seen_data) = (false, false, false);
    sc.ws();
    sc.expect(b'{')?;
    sc.ws();
    if sc.peek()? == b'}' {
        sc.i += 1;
    } else {
        loop {
            if sc.peek()? != b'"' {
                return Err(Invalid);
            }
            let (s, e, esc) = sc.string()?;
            let decoded;
            let key: &[u8] = if esc {
                decoded = sc.decode(s, e)?;
                decoded.as_bytes()
            } else {
                &sc.b[s..e]
            };
            sc.ws();
            sc.expect(b':')?;
            sc.ws();
            match key {
                b"type" => {
                    if std::mem::replace(&mut seen_type, true) {
                        return Err(Invalid);
                    }
                    match sc.peek()? {
                        b'"' => {
                            let (s, e, esc) = sc.string()?;
                            out.kind = Some(if esc {
                                Cow::Owned(sc.decode(s, e)?)
                            } else {
                                Cow::Borrowed(&text[s..e])
                            });
                        }
                        b'n' => sc.literal(b"null")?,
                        _ => return Err(Invalid),
                    }
                }
                b"id" | b"data" => {
                    let seen = if key == b"id" {
                        &mut seen_id
                    } else {
                        &mut seen_data
                    };
                    if std::mem::replace(seen, true) {
                        return Err(Invalid);
                    }
                    let start = sc.i;
                    sc.value(1)?;
                    let raw = &text[start..sc.i];
                    if key == b"id" {
                        out.id = Some(raw);
                    } else {
                        out.data = Some(raw);
                    }
                }
                _ => sc.value(1)?,
            }
            sc.ws();
            match sc.peek()? {
                b',' => {
                    sc.i += 1;
                    sc.ws();
                }
                b'}' => {
                    sc.i += 1;
                    break;
                }
                _ => return Err(Invalid),
            }
        }
    }
    sc.ws();
    if sc.i != sc.b.len() {
        return Err(Invalid);
    }
    Ok(out)
}

/// `{"type":kind,"id":id,"data":data}`: `id` (raw JSON) only if given, `data` (raw JSON) only
/// if given. The one builder of server-made envelopes outside a `Context`.
pub(crate) fn envelope(kind: &str, id: Option<&str>, data: Option<&str>) -> String {
    let mut s = String::with_capacity(kind.len() + 32 + data.map_or(0, str::len));
    s.push_str(r#"{"type":"#);
    push_str(&mut s, kind);
    if let Some(id) = id {
        s.push_str(r#","id":"#);
        s.push_str(id);
    }
    if let Some(d) = data {
        s.push_str(r#","data":"#);
        s.push_str(d);
    }
    s.push('}');
    s
}

/// `{"type":"error","id":id,"error":message}` (docs/PROTOCOL.md), with `retry_after_ms` when
/// retrying may help and `extra` (already rendered `,"key":value` fields) appended.
pub(crate) fn error_envelope(
    id: Option<&str>,
    message: &str,
    retry_after_ms: Option<u64>,
    extra: &str,
) -> String {
    let mut s = String::with_capacity(message.len() + extra.len() + 48);
    s.push_str(r#"{"type":"error""#);
    if let Some(id) = id {
        s.push_str(r#","id":"#);
        s.push_str(id);
    }
    s.push_str(r#","error":"#);
    push_str(&mut s, message);
    if let Some(ms) = retry_after_ms {
        s.push_str(r#","retry_after_ms":"#);
        s.push_str(&ms.to_string());
    }
    s.push_str(extra);
    s.push('}');
    s
}

/// Appends `s` as a JSON string literal (with the escapes serde_json uses).
pub(crate) fn push_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    if find_special(s.as_bytes()).is_none() {
        // The common case: nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` holds an ASCII byte, hence a char boundary.
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use std::fmt;

    /// The reference: the same envelope through serde_json.
    struct Oracle<'a>(RawEnvelope<'a>);

    impl<'de> Deserialize<'de> for Oracle<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Oracle<'de>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Oracle<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Oracle<'de>, A::Error> {
                    let mut out = RawEnvelope {
                        kind: None,
                        id: None,
                        data: None,
                    };
                    let (mut t, mut i, mut d) = (false, false, false);
                    while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                        match &*k {
                            "type" => {
                                if std::mem::replace(&mut t, true) {
                                    return Err(de::Error::custom("dup"));
                                }
                                out.kind = m.next_value::<Option<String>>()?.map(Cow::Owned);
                            }
                            "id" => {
                                if std::mem::replace(&mut i, true) {
                                    return Err(de::Error::custom("dup"));
                                }
                                out.id = Some(m.next_value::<&RawValue>()?.get());
                            }
                            "data" => {
                                if std::mem::replace(&mut d, true) {
                                    return Err(de::Error::custom("dup"));
                                }
                                out.data = Some(m.next_value::<&RawValue>()?.get());
                            }
                            _ => {
                                m.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(Oracle(out))
                }
            }
            d.deserialize_map(V)
        }
    }

    fn oracle(text: &str) -> Option<RawEnvelope<'_>> {
        serde_json::from_str::<Oracle<'_>>(text).ok().map(|o| o.0)
    }

    fn same(text: &str) {
        let mine = scan(text).ok();
        let theirs = oracle(text);
        assert_eq!(mine, theirs, "on {text:?}");
    }

    #[test]
    fn agrees_with_serde_json_on_cases() {
        for t in [
            r#"{"type":"echo","id":1,"data":{"a":[1,2.5e-3,true,false,null,"x\"y\u00e9"]}}"#,
            r#" { "data" : [ ] , "type" : "a\nb" , "id" : -0.0 } "#,
            r#"{"typ\u0065":"t","\u0069d":"x"}"#,
            r#"{"type":null}"#,
            r#"{}"#,
            r#"{"x":{"y":{}}}"#,
            r#"{"type":"a","type":"b"}"#,
            r#"{"t\u0079pe":"a","type":"b"}"#,
            r#"{"type":1}"#,
            r#"{"type":"a",}"#,
            r#"{"type":"a"} x"#,
            r#"{"type":"a" "id":1}"#,
            r#"["type"]"#,
            r#""type""#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":.5}"#,
            r#"{"id":-}"#,
            r#"{"id":1e}"#,
            r#"{"id":1E+5}"#,
            r#"{"id":tru}"#,
            r#"{"id":"\x"}"#,
            r#"{"id":"\u12g4"}"#,
            "{\"id\":\"a\tb\"}",
            "{\"id\":\"a\u{7f}b\"}",
            r#"{"\ud800":1}"#,
            r#"{"type":"\ud800"}"#,
            r#"{"id":"\ud800"}"#,
            r#"{"id":[1,]}"#,
            r#"{"id":[,1]}"#,
            r#"{"id":{"a"}}"#,
            r#"{"id":{1:2}}"#,
            r#"{"a":1,,"b":2}"#,
            "",
            "{",
            "{\"",
            "{\"type\"",
            "{\"type\":",
            "{\"type\":\"e",
        ] {
            same(t);
        }
        let deep = format!("{{\"data\":{}{}}}", "[".repeat(120), "]".repeat(120));
        same(&deep);
        let too_deep = format!("{{\"data\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(scan(&too_deep).is_err());
    }

    #[test]
    fn agrees_with_serde_json_on_mutations() {
        let seeds = [
            r#"{"type":"echo","id":17,"data":{"room":"lobby","text":"hi \"there\" é"}}"#,
            r#"{"id":"a-1","type":"x","data":[1,-2.5,3e10,true,null,{"k":[]}],"extra":false}"#,
            r#"{"type":"t\n","data":"\u00e9\\\/"}"#,
        ];
        let alphabet: Vec<char> = "{}[]\":,\\ntrufalse0123456789-+.eEu \t\r\nabxé\u{1}"
            .chars()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut ok = 0;
        for round in 0..60_000 {
            let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
            for _ in 0..1 + rnd(3) {
                let at = rnd(chars.len() + 1);
                match rnd(3) {
                    0 if at < chars.len() => chars[at] = alphabet[rnd(alphabet.len())],
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => chars.insert(at, alphabet[rnd(alphabet.len())]),
                }
            }
            let text: String = chars.into_iter().collect();
            same(&text);
            ok += usize::from(scan(&text).is_ok());
        }
        // The corpus exercises both sides.
        assert!(ok > 5_000 && ok < 55_000, "{ok} of 60000 valid");
    }

    #[test]
    fn find_special_is_exact() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes = [
            b'a', b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xa0, 0xff, 0x00, b'!', b'~',
        ];
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let v: Vec<u8> = (0..len)
                .map(|k| bytes[((state >> (k % 60)) as usize + k * 7) % bytes.len()])
                .collect();
            let naive = v.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            assert_eq!(find_special(&v), naive, "{v:?}");
        }
    }

    #[test]
    fn escapes_match_serde_json() {
        for s in [
            "",
            "echo",
            "a\"b\\c",
            "tab\there\n\r\u{8}\u{c}",
            "\u{1}\u{1f}\u{7f}",
            "é ü 日本 🎉",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }
}
