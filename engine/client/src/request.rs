//! What to connect to: [`Url`] (a parsed `ws://` URL) and [`Request`] (a URL with extra headers
//! and subprotocols), and [`IntoRequest`], which the connect calls take.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A parsed `ws://host[:port][/path][?query]` or `wss://…` URL.
///
/// The scheme is case-insensitive; the port defaults to 80 (`ws://`) or 443 (`wss://`); an
/// IPv6 host is written in brackets (`ws://[::1]:9001/`). `wss://` needs the crate's `tls`
/// feature and is refused with [`Error::TlsNotSupported`] without it; user
/// information (`user:pass@`) and fragments (`#…`, forbidden by RFC 6455 §3) with
/// [`Error::InvalidUrl`]. The path and query are sent as written (bytes that cannot appear in
/// a request line are percent-encoded).
///
/// ```
/// use edge_ws_client::Url;
///
/// let url: Url = "ws://example.com:8080/chat?room=1".parse()?;
/// assert_eq!(url.host(), "example.com");
/// assert_eq!(url.port(), 8080);
/// assert_eq!(url.path_and_query(), "/chat?room=1");
/// assert!(!url.is_tls());
/// # Ok::<(), edge_ws_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    host: String,
    port: u16,
    path: String,
    tls: bool,
}

impl Url {
    /// Parses `s`; see the [type docs](Url) for what is accepted.
    pub fn parse(s: &str) -> Result<Url> {
        let bad = |why: &str| Err(Error::InvalidUrl(format!("{why}: {s:?}")));
        let Some((scheme, rest)) = s.split_once("://") else {
            return bad("expected ws://host[:port]/path");
        };
        let tls = scheme.eq_ignore_ascii_case("wss");
        if tls && !cfg!(feature = "tls") {
            return Err(Error::TlsNotSupported);
        }
        if !tls && !scheme.eq_ignore_ascii_case("ws") {
            return bad("the scheme must be ws:// or wss://");
        }
        if rest.contains('#') {
            return bad("a WebSocket URL may not have a fragment");
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return bad("credentials in the URL are not supported (send an Authorization header)");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return bad("unterminated IPv6 address");
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("invalid IPv6 address");
            }
            match after {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return bad("junk after the IPv6 address"),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return bad("missing host");
        }
        let ipv6 = authority.starts_with('[');
        if !ipv6
            && host
                .bytes()
                .any(|b| b <= b' ' || b >= 0x7f || b"/\\?#[]@:%".contains(&b))
        {
            return bad("invalid character in the host");
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => return bad("invalid port"),
                }
            }
            Some(_) => return bad("invalid port"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Url {
            host: host.to_owned(),
            port,
            path,
            tls,
        })
    }

    /// Whether this is a `wss://` URL (TLS, with the host as the SNI name and the name the
    /// server's certificate must be valid for).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The host: a name or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (80 or 443 unless the URL names one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: the path and the query, starting with `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path
    }

    /// The `Host` header value: the host, in brackets if IPv6, with `:port` unless it is the
    /// scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

impl FromStr for Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<Url> {
        Url::parse(s)
    }
}

/// One connection's target: a [`Url`], extra header lines and the subprotocols to offer.
///
/// Headers and subprotocols given here come after those set on the
/// [`ClientBuilder`](crate::ClientBuilder).
///
/// ```
/// use edge_ws_client::Request;
///
/// let req = Request::new("ws://127.0.0.1:9001/feed")?
///     .header("Authorization", "Bearer abc")
///     .protocol("v2.feed");
/// assert_eq!(req.url().path_and_query(), "/feed");
/// # Ok::<(), edge_ws_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    url: Url,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
}

impl Request {
    /// A request for `url` (a string or a [`Url`]).
    pub fn new(url: impl IntoUrl) -> Result<Request> {
        Ok(Request {
            url: url.into_url()?,
            headers: Vec::new(),
            protocols: Vec::new(),
        })
    }

    /// Adds a header line (e.g. `Origin`, `Authorization`, a cookie). Names are checked when
    /// connecting: they must be HTTP tokens and not one the client sets itself.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers a subprotocol (`Sec-WebSocket-Protocol`), after those offered before.
    pub fn protocol(mut self, name: impl Into<String>) -> Self {
        self.protocols.push(name.into());
        self
    }

    /// The URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The extra headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The subprotocols offered, in order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// Checks header names and subprotocol names.
    pub(crate) fn validate(&self) -> Result<()> {
        const RESERVED: [&str; 7] = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-extensions",
            "sec-websocket-protocol",
        ];
        for (name, value) in &self.headers {
            if !is_token(name) || RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                return Err(Error::InvalidHeader(name.clone()));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(Error::InvalidHeader(name.clone()));
            }
        }
        for p in &self.protocols {
            if !is_token(p) {
                return Err(Error::InvalidProtocol(p.clone()));
            }
        }
        Ok(())
    }

    /// This request with `headers` and `protocols` put before its own.
    pub(crate) fn with_defaults(&self, headers: &[(String, String)], protocols: &[String]) -> Self {
        Request {
            url: self.url.clone(),
            headers: headers.iter().chain(&self.headers).cloned().collect(),
            protocols: protocols.iter().chain(&self.protocols).cloned().collect(),
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What names a WebSocket endpoint: a `&str`/`String` URL or a [`Url`].
pub trait IntoUrl {
    /// Parses (or passes on) the URL.
    fn into_url(self) -> Result<Url>;
}

impl IntoUrl for Url {
    fn into_url(self) -> Result<Url> {
        Ok(self)
    }
}

impl IntoUrl for &Url {
    fn into_url(self) -> Result<Url> {
        Ok(self.clone())
    }
}

impl IntoUrl for &str {
    fn into_url(self) -> Result<Url> {
        Url::parse(self)
    }
}

impl IntoUrl for String {
    fn into_url(self) -> Result<Url> {
        Url::parse(&self)
    }
}

impl IntoUrl for &String {
    fn into_url(self) -> Result<Url> {
        Url::parse(self)
    }
}

/// What the connect calls take: a URL (`&str`, `String`, [`Url`]) or a whole [`Request`].
pub trait IntoRequest {
    /// Builds the request.
    fn into_request(self) -> Result<Request>;
}

impl IntoRequest for Request {
    fn into_request(self) -> Result<Request> {
        Ok(self)
    }
}

impl IntoRequest for &Request {
    fn into_request(self) -> Result<Request> {
        Ok(self.clone())
    }
}

impl<T: IntoUrl> IntoRequest for T {
    fn into_request(self) -> Result<Request> {
        Request::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let u = Url::parse("ws://example.com/").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("example.com", 80, "/")
        );
        assert_eq!(u.host_header(), "example.com");
        let u = Url::parse("WS://127.0.0.1:9001").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("127.0.0.1", 9001, "/")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9001");
        let u = Url::parse("ws://h:1/a/b?x=1&y=2").unwrap();
        assert_eq!(u.path_and_query(), "/a/b?x=1&y=2");
        let u = Url::parse("ws://h?x=1").unwrap();
        assert_eq!(u.path_and_query(), "/?x=1");
        let u = Url::parse("ws://[::1]:9001/p").unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 9001));
        assert_eq!(u.host_header(), "[::1]:9001");
        assert_eq!(u.to_string(), "ws://[::1]:9001/p");
        let u = Url::parse("ws://[::1]").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.host_header().as_str()),
            ("::1", 80, "[::1]")
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        #[cfg(not(feature = "tls"))]
        {
            assert!(matches!(
                Url::parse("wss://h/"),
                Err(Error::TlsNotSupported)
            ));
            assert!(matches!(
                Url::parse("WSS://h:443/"),
                Err(Error::TlsNotSupported)
            ));
        }
        #[cfg(feature = "tls")]
        {
            let u = Url::parse("WSS://h/x").unwrap();
            assert!(u.is_tls());
            assert_eq!((u.port(), u.host_header().as_str()), (443, "h"));
            assert_eq!(u.to_string(), "wss://h:443/x");
            let u = Url::parse("wss://h:8443/").unwrap();
            assert_eq!(u.host_header(), "h:8443");
            assert!(!Url::parse("ws://h/").unwrap().is_tls());
        }
        for bad in [
            "http://h/",
            "h:80/",
            "ws://",
            "ws:///path",
            "ws://h:/",
            "ws://h:0/",
            "ws://h:65536/",
            "ws://h:+80/",
            "ws://h:8x/",
            "ws://u:p@h/",
            "ws://h/#frag",
            "ws://[::1/",
            "ws://[nope]:80/",
            "ws://[::1]x/",
            "ws://h h/",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(Error::InvalidUrl(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn checks_headers_and_protocols() {
        let ok = Request::new("ws://h/")
            .unwrap()
            .header("Origin", "http://h")
            .protocol("chat.v1");
        ok.validate().unwrap();
        for name in ["Host", "sec-websocket-key", "Bad Name", ""] {
            let r = Request::new("ws://h/").unwrap().header(name, "x");
            assert!(matches!(r.validate(), Err(Error::InvalidHeader(n)) if n == name));
        }
        let r = Request::new("ws://h/").unwrap().header("X-A", "a\r\nB: c");
        assert!(matches!(r.validate(), Err(Error::InvalidHeader(_))));
        let r = Request::new("ws://h/").unwrap().protocol("a b");
        assert!(matches!(r.validate(), Err(Error::InvalidProtocol(_))));
    }
}
