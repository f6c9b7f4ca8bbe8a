//! TLS for `wss://` (feature `tls`): certificates from PEM, several by SNI, ALPN `http/1.1`,
//! TLS 1.2 and 1.3 on rustls with the `ring` provider.
//!
//! A [`TlsConfig`] names the address of a second listener on every core; its connections are
//! decrypted and encrypted on their own core by the runtime (sans-IO rustls, no extra thread)
//! and reach the engine as plaintext, so everything above (upgrade, handlers, fan-out, limits)
//! is the same for `ws://` and `wss://`. The handshake timeout
//! ([`Config::handshake_timeout`](crate::Config::handshake_timeout)) runs from the accept, so
//! it covers the TLS handshake and the HTTP upgrade together. Certificates can be replaced
//! while the engine runs ([`TlsConfig::reloader`]). Design record: `docs/design/tls.md`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;

pub use rustls;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The certificate PEM holds no `CERTIFICATE` block, or one that does not parse.
    #[error("{what}: no usable certificate ({detail})")]
    Certificate {
        /// Which certificate (file name or "certificate PEM").
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The key PEM holds no private key (PKCS#8, PKCS#1 or SEC1), or one rustls cannot use.
    #[error("{what}: no usable private key ({detail})")]
    Key {
        /// Which key (file name or "key PEM").
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{what}: the private key does not match the certificate ({detail})")]
    KeyMismatch {
        /// Which certificate.
        what: String,
        /// What rustls said.
        detail: String,
    },
    /// An SNI name is not a DNS name, or the certificate is not valid for it.
    #[error("certificate for SNI name {name:?}: {detail}")]
    SniName {
        /// The name.
        name: String,
        /// What rustls said.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS setup: the listen address of the TLS listener, a default certificate and
/// more certificates chosen by the client's SNI name.
///
/// ```no_run
/// # fn main() -> Result<(), edge_ws::tls::TlsError> {
/// let tls = edge_ws::tls::TlsConfig::from_pem_files(
///     "0.0.0.0:443".parse().unwrap(),
///     "/etc/edge-ws/cert.pem",
///     "/etc/edge-ws/key.pem",
/// )?
/// .sni_pem_files("chat.example.com", "/etc/edge-ws/chat.pem", "/etc/edge-ws/chat.key")?;
/// let engine = edge_ws::Engine::builder().tls(tls);
/// # let _ = engine;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    /// Address of the TLS listener on every core (port 0 picks a free port); the plain
    /// listener ([`Config::addr`](crate::Config::addr)) keeps running beside it.
    pub addr: SocketAddr,
    /// TLS handshakes one core runs at once at most; more connections are closed at accept
    /// (counted in `tls_refused`). Default 1024.
    pub max_handshakes_per_core: usize,
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// What the running listener serves: set by [`TlsConfig::server_config`], replaced by a
    /// [`CertificateReloader`]; shared by clones.
    live: Arc<RwLock<Arc<Certificates>>>,
}

/// A certificate set: the default one and those by SNI name.
#[derive(Debug)]
struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// Replaces the certificates of a running TLS listener (see [`TlsConfig::reloader`]).
///
/// Handshakes that start after [`reload`](Self::reload) get the new certificates; open
/// connections keep the session they have, so nothing is dropped.
#[derive(Clone)]
pub struct CertificateReloader {
    live: Arc<RwLock<Arc<Certificates>>>,
}

impl fmt::Debug for CertificateReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateReloader")
            .finish_non_exhaustive()
    }
}

impl CertificateReloader {
    /// Serves the certificates of `from` (its default and SNI certificates; its address and
    /// limits are ignored) from the next handshake on.
    pub fn reload(&self, from: &TlsConfig) {
        let next = Arc::new(from.certificates());
        match self.live.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("TlsConfig")
            .field("addr", &self.addr)
            .field("max_handshakes_per_core", &self.max_handshakes_per_core)
            .field("sni_names", &names)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: ring's suites with AES-128-GCM first. The server picks by its own
/// order (`ignore_client_order`): rustls clients, for one, list AES-256-GCM first, which costs
/// about 40% more per byte than AES-128-GCM for no practical gain in strength here.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate chain and its key from PEM; `what` names them in errors.
fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            what: what.to_string(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            what: what.to_string(),
            detail: e.to_string(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
            TlsError::Certificate {
                what: what.to_string(),
                detail: e.to_string(),
            }
        }
        other => TlsError::Key {
            what: what.to_string(),
            detail: other.to_string(),
        },
    })
}

impl TlsConfig {
    /// A TLS listener on `addr` with the certificate chain and private key read from PEM files
    /// (the chain: end-entity certificate first, then intermediates).
    pub fn from_pem_files(
        addr: SocketAddr,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let ck = certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?;
        Ok(Self::with_key(addr, ck))
    }

    /// Like [`TlsConfig::from_pem_files`], from PEM text in memory.
    pub fn from_pem(addr: SocketAddr, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let ck = certified_key(cert_pem, key_pem, "certificate PEM")?;
        Ok(Self::with_key(addr, ck))
    }

    fn with_key(addr: SocketAddr, ck: CertifiedKey) -> Self {
        let ck = Arc::new(ck);
        TlsConfig {
            addr,
            max_handshakes_per_core: 1024,
            default: ck.clone(),
            by_name: HashMap::new(),
            live: Arc::new(RwLock::new(Arc::new(Certificates {
                default: ck,
                by_name: HashMap::new(),
            }))),
        }
    }

    fn certificates(&self) -> Certificates {
        Certificates {
            default: self.default.clone(),
            by_name: self.by_name.clone(),
        }
    }

    /// A handle that replaces the certificates this configuration's listener serves, while
    /// it runs (e.g. when the files changed); every clone of this configuration shares it.
    pub fn reloader(&self) -> CertificateReloader {
        CertificateReloader {
            live: self.live.clone(),
        }
    }

    /// Serves this certificate to clients asking for `name` by SNI (case-insensitive; the
    /// certificate must be valid for the name). Clients asking for another name, or none, get
    /// the default certificate.
    pub fn sni_pem_files(
        self,
        name: &str,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let ck = certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?;
        self.with_sni(name, ck)
    }

    /// Like [`TlsConfig::sni_pem_files`], from PEM text in memory.
    pub fn sni_pem(self, name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let ck = certified_key(cert_pem, key_pem, &format!("certificate PEM for {name}"))?;
        self.with_sni(name, ck)
    }

    fn with_sni(mut self, name: &str, ck: CertifiedKey) -> Result<Self, TlsError> {
        let name = name.to_ascii_lowercase();
        // rustls' own SNI resolver checks that the name is a DNS name the certificate covers.
        ResolvesServerCertUsingSni::new()
            .add(&name, ck.clone())
            .map_err(|e| TlsError::SniName {
                name: name.clone(),
                detail: e.to_string(),
            })?;
        self.by_name.insert(name, Arc::new(ck));
        Ok(self)
    }

    /// Sets [`TlsConfig::max_handshakes_per_core`].
    pub fn max_handshakes_per_core(mut self, n: usize) -> Self {
        self.max_handshakes_per_core = n;
        self
    }

    /// The SNI names with a certificate of their own.
    pub fn sni_names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The rustls server configuration: TLS 1.3 and 1.2, the `ring` provider's cipher suites
    /// in the server's order (AES-128-GCM first), ALPN `http/1.1`, no early data, no client
    /// certificates, the certificates above.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.reloader().reload(self);
        let resolver = Resolver {
            live: self.live.clone(),
        };
        let mut sc = rustls::ServerConfig::builder_with_provider(server_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        sc.alpn_protocols = vec![b"http/1.1".to_vec()];
        sc.max_early_data_size = 0;
        sc.ignore_client_order = true;
        Ok(Arc::new(sc))
    }
}

/// The SNI name's certificate, else the default one.
#[derive(Debug)]
struct Resolver {
    live: Arc<RwLock<Arc<Certificates>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands the name over lower-cased and validated as a DNS name.
        // One read lock per handshake (never contended but by a reload).
        let certs = match self.live.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(ck) = hello.server_name().and_then(|n| certs.by_name.get(n)) {
            return Some(ck.clone());
        }
        Some(certs.default.clone())
    }
}
