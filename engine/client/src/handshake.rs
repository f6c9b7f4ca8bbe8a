//! Opening a connection: TCP, the upgrade request, the server's 101 and the permessage-deflate
//! answer, each under its timeout.

use bytes::BytesMut;
use edge_ws_protocol::deflate::{client_accept, client_offer, DeflateParams};
use edge_ws_protocol::handshake::{parse_response, ClientOutcome, ClientRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::Stream;
use tokio::time::timeout;

use crate::error::{Error, Result};
use crate::keys::{handshake_key, MaskKeys};
use crate::request::Request;
use crate::settings::Settings;

/// A connection whose upgrade succeeded, ready for its driver.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) stream: Stream,
    /// Bytes the server sent after its 101 (frames).
    pub(crate) leftover: BytesMut,
    /// The subprotocol the server chose.
    pub(crate) protocol: Option<String>,
    /// permessage-deflate, when agreed.
    pub(crate) deflate: Option<DeflateParams>,
    /// The server's response headers (names lowercased).
    pub(crate) headers: Vec<(String, String)>,
    /// Mask keys for the encoder and for the connection's control frames.
    pub(crate) keys: (MaskKeys, MaskKeys),
}

/// Connects to `req` with the settings `s` (already validated).
pub(crate) async fn connect(s: &Settings, req: &Request) -> Result<Established> {
    let keys = (MaskKeys::new()?, MaskKeys::new()?);
    let key = handshake_key()?;
    let url = req.url();
    let stream = timeout(
        s.connect_timeout,
        TcpStream::connect((url.host(), url.port())),
    )
    .await
    .map_err(|_| Error::ConnectTimeout(s.connect_timeout))?
    .map_err(Error::connect)?;
    stream.set_nodelay(true).map_err(Error::connect)?;
    // The TLS handshake (wss://) counts against the handshake timeout, like the upgrade.
    timeout(s.handshake_timeout, async {
        let stream = secure(s, req, stream).await?;
        upgrade(s, req, stream, key, keys).await
    })
    .await
    .map_err(|_| Error::HandshakeTimeout(s.handshake_timeout))?
}

/// The TLS handshake for a `wss://` URL; a `ws://` URL's stream as it is.
async fn secure(s: &Settings, req: &Request, tcp: TcpStream) -> Result<Stream> {
    if !req.url().is_tls() {
        return Ok(Stream::Plain(tcp));
    }
    #[cfg(feature = "tls")]
    return crate::stream::tls::connect(s.tls.as_ref(), req.url().host(), tcp).await;
    #[cfg(not(feature = "tls"))]
    {
        let _ = s;
        Err(Error::TlsNotSupported)
    }
}

async fn upgrade(
    s: &Settings,
    req: &Request,
    mut stream: Stream,
    key: [u8; 16],
    keys: (MaskKeys, MaskKeys),
) -> Result<Established> {
    let host = req.url().host_header();
    let offer = s.deflate.as_ref().map(client_offer).unwrap_or_default();
    let protocols: Vec<&str> = req.protocols().iter().map(String::as_str).collect();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let creq = ClientRequest {
        host: &host,
        path: req.url().path_and_query(),
        key,
        protocols: &protocols,
        extensions: (!offer.is_empty()).then_some(offer.as_str()),
        extra_headers: &headers,
    };
    let mut out = Vec::with_capacity(256);
    creq.write(&mut out);
    stream.write_all(&out).await.map_err(Error::io)?;

    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await.map_err(Error::io)? == 0 {
            return Err(Error::HandshakeEof);
        }
        match parse_response(&buf, &creq, s.max_response_len)? {
            ClientOutcome::Partial => {
                buf.reserve(4096);
            }
            ClientOutcome::Complete(resp, used) => {
                let _ = buf.split_to(used);
                let deflate = match &s.deflate {
                    Some(cfg) => client_accept(&resp.extensions, cfg)?,
                    // parse_response already refused an extension answer to no offer.
                    None => None,
                };
                return Ok(Established {
                    stream,
                    leftover: buf,
                    protocol: resp.protocol,
                    deflate,
                    headers: resp.headers,
                    keys,
                });
            }
        }
    }
}
