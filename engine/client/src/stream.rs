//! The transport under a connection: plain TCP, or TLS over TCP (feature `tls`, rustls via
//! tokio-rustls, for `wss://`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes of spare room a TLS read offers (and zeroes first): one TLS record's plaintext.
#[cfg(feature = "tls")]
const TLS_READ_WINDOW: usize = 16 * 1024;

/// A connection's byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Reads what is available into the spare capacity of `buf` (which must have some);
    /// `Ready(Ok(0))` at the end of the stream.
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                // rustls hands out at most one record (16 KiB) of plaintext per read, so a
                // bigger window would only be zeroed for nothing.
                let len = buf.len();
                buf.resize(buf.capacity().min(len + TLS_READ_WINDOW), 0);
                let mut rb = ReadBuf::new(&mut buf[len..]);
                let r = Pin::new(&mut **s).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                buf.truncate(len + n);
                r.map_ok(|()| n)
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// TLS for `wss://` (feature `tls`).
#[cfg(feature = "tls")]
pub(crate) mod tls {
    use std::sync::{Arc, OnceLock};

    use rustls::pki_types::ServerName;
    use tokio::net::TcpStream;

    use super::Stream;
    use crate::error::{Error, Result};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A client configuration trusting `roots`: TLS 1.3 and 1.2, ALPN `http/1.1`.
    pub(crate) fn config_with_roots(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }

    /// The default: Mozilla's root CAs (webpki-roots), built once.
    pub(crate) fn default_config() -> Arc<rustls::ClientConfig> {
        static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                config_with_roots(roots)
            })
            .clone()
    }

    /// The TLS handshake over `tcp` with `host` as the SNI name and the name checked in the
    /// server's certificate (an IP address host is checked against the certificate's IP
    /// addresses and sends no SNI).
    pub(crate) async fn connect(
        config: Option<&Arc<rustls::ClientConfig>>,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Stream> {
        let config = config.cloned().unwrap_or_else(default_config);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| Error::InvalidUrl(format!("{host:?} is not a valid TLS server name")))?;
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) => Err(handshake_error(host, e)),
        }
    }

    fn handshake_error(host: &str, e: std::io::Error) -> Error {
        let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => r.to_string(),
            None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the TLS handshake".to_owned()
            }
            None => e.to_string(),
        };
        Error::Tls {
            host: host.to_owned(),
            reason,
        }
    }
}
