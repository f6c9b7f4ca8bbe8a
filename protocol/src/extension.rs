//! `Sec-WebSocket-Extensions` header values (RFC 6455 §9.1).

use core::fmt;

/// One extension offer (or answer): a name and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// `name[=value]` parameters; quoted values are unquoted.
    pub params: Vec<(String, Option<String>)>,
}

/// A malformed `Sec-WebSocket-Extensions` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Sec-WebSocket-Extensions header")]
pub struct ExtensionSyntaxError;

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn token(s: &str) -> Result<&str, ExtensionSyntaxError> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() || !s.chars().all(is_tchar) {
        return Err(ExtensionSyntaxError);
    }
    Ok(s)
}

/// Parses one header value (a comma-separated list of offers) and appends the offers to `out`.
///
/// Call once per header line: several `Sec-WebSocket-Extensions` lines are one list.
pub fn parse_extensions(
    value: &str,
    out: &mut Vec<ExtensionOffer>,
) -> Result<(), ExtensionSyntaxError> {
    for item in split_outside_quotes(value, ',') {
        if item.trim_matches([' ', '\t']).is_empty() {
            // RFC 7230 #rule: empty list elements are allowed and ignored.
            continue;
        }
        let mut parts = split_outside_quotes(item, ';').into_iter();
        let name = token(parts.next().unwrap_or_default())?.to_owned();
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = match p.split_once('=') {
                None => (token(p)?, None),
                Some((k, v)) => {
                    let v = v.trim_matches([' ', '\t']);
                    let v = if let Some(inner) = v.strip_prefix('"') {
                        let inner = inner.strip_suffix('"').ok_or(ExtensionSyntaxError)?;
                        if inner.contains(['"', '\\']) {
                            return Err(ExtensionSyntaxError);
                        }
                        token(inner)?
                    } else {
                        token(v)?
                    };
                    (token(k)?, Some(v.to_owned()))
                }
            };
            params.push((k.to_ascii_lowercase(), v));
        }
        out.push(ExtensionOffer {
            name: name.to_ascii_lowercase(),
            params,
        });
    }
    Ok(())
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

impl fmt::Display for ExtensionOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, "; {k}={v}")?,
                None => write!(f, "; {k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<ExtensionOffer>, ExtensionSyntaxError> {
        let mut v = Vec::new();
        parse_extensions(s, &mut v).map(|()| v)
    }

    #[test]
    fn parses_several_offers_with_params() {
        let v = parse(
            "permessage-deflate; client_max_window_bits; server_max_window_bits=\"10\", \
             permessage-deflate ,foo",
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "permessage-deflate");
        assert_eq!(
            v[0].params,
            vec![
                ("client_max_window_bits".to_owned(), None),
                ("server_max_window_bits".to_owned(), Some("10".to_owned()))
            ]
        );
        assert!(v[1].params.is_empty());
        assert_eq!(v[2].name, "foo");
        assert_eq!(
            v[0].to_string(),
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "permessage-deflate; =1",
            "a b",
            "x; y=\"unterminated",
            "x;y=\"a\\b\"",
            "; y",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("").unwrap().is_empty());
    }
}
