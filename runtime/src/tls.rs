//! TLS termination on the worker's own loop (feature `tls`).
//!
//! Give the server a rustls [`ServerConfig`](rustls::ServerConfig) with
//! [`ServerBuilder::tls`](crate::ServerBuilder::tls) and every accepted
//! connection speaks TLS: the worker does the handshake and the record
//! layer, and the handler sees plaintext in [`Input`](crate::Input) and
//! writes plaintext to [`Output`](crate::Output), as without TLS.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = corelane::tls::server_config_from_pem(
//!     "cert.pem".as_ref(),
//!     "key.pem".as_ref(),
//!     &[b"http/1.1"],
//! )?;
//! let builder = corelane::Server::builder().tls(config);
//! # let _ = builder;
//! # Ok(())
//! # }
//! ```
//!
//! What protects a TLS connection (as a plain one):
//!
//! - the header timeout runs from accept, so a client that opens TCP and
//!   trickles its ClientHello (or stops) is closed when it ends, as nginx's
//!   `ssl_handshake_timeout`; then the header and idle timeouts apply to
//!   plaintext messages;
//! - the input limit and the output high-water mark count plaintext; rustls
//!   holds at most 64 KiB of ciphertext to send, and decrypts no further
//!   than the input has room for;
//! - a failed handshake (no shared version or cipher suite, garbage) or a
//!   bad record closes that connection only, with
//!   [`CloseReason::TlsError`](crate::CloseReason::TlsError), counted in
//!   the metrics;
//! - `close_notify` is sent on every close the server makes.
//!
//! Certificates are reloaded without a restart: [`CertFiles::watch`]
//! re-reads the PEM files when they change and on `SIGHUP`; a new pair is
//! checked (parsed, key matching the certificate) before it replaces the
//! old one for every worker at once, and a bad one is refused with a log
//! line while the old one stays. Handshakes in progress finish with the
//! certificate they started with.
//!
//! The crypto provider is *ring*: it builds from crates with a C compiler
//! alone (aws-lc-rs needs cmake, and more time to build).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

pub use rustls;

pub use crate::buffer::TlsInfo;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read or holds no PEM of the kind needed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the certificate and key (a key that does not match,
    /// an unsupported key type).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration from a PEM certificate chain (leaf first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1), offering the ALPN protocols
/// `alpn` in order of preference, with TLS 1.2 and 1.3, the *ring*
/// provider's default cipher suites, and session resumption by stateless
/// tickets whose key all workers share (rotated every 6 hours). The files
/// are read once; [`CertFiles`] reloads them.
///
/// # Errors
///
/// A file is unreadable or holds no certificate or key, or rustls refuses
/// the pair.
pub fn server_config_from_pem(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    CertFiles::load(cert, key)?.server_config(alpn)
}

/// A certificate chain and key read from PEM files, which can be read again
/// while the server runs ([`reload`](Self::reload), [`watch`](Self::watch)):
/// the server configuration [`server_config`](Self::server_config) builds
/// asks it for the certificate at each handshake.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertFiles {
    /// Reads the certificate chain (leaf first) and the private key.
    ///
    /// # Errors
    ///
    /// A file is unreadable or holds no certificate or key, or the key does
    /// not match the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertFiles>, TlsConfigError> {
        let current = read_pair(cert, key)?;
        Ok(Arc::new(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; the new pair replaces the old one only if it
    /// is whole and matches.
    ///
    /// # Errors
    ///
    /// Why the new pair was refused (the old one stays in use).
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let pair = read_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// A server configuration serving these files' certificate (see
    /// [`server_config_from_pem`]).
    ///
    /// # Errors
    ///
    /// rustls refused a setting.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Stateless session tickets: one key for every worker (they share
        // this configuration), rotated every 6 hours, the previous key
        // still accepted for the 6 hours after.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(config))
    }

    /// Starts a thread that reloads the files when their modification
    /// time changes (looked at every `every`) or the process gets
    /// `SIGHUP`, and logs each reload and each refusal. It runs for the
    /// life of the process.
    ///
    /// # Errors
    ///
    /// The `SIGHUP` handler or the thread could not be set up.
    pub fn watch(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let mut hangups = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let files = Arc::clone(self);
        std::thread::Builder::new()
            .name("corelane-tls-reload".into())
            .spawn(move || {
                let mut seen = files.stamps();
                loop {
                    std::thread::sleep(every);
                    let hangup = hangups.pending().count() > 0;
                    let stamps = files.stamps();
                    if !hangup && stamps == seen {
                        continue;
                    }
                    seen = stamps;
                    let why = if hangup {
                        "SIGHUP"
                    } else {
                        "the files changed"
                    };
                    match files.reload() {
                        Ok(()) => tracing::info!(
                            cert = %files.cert.display(),
                            "TLS certificate reloaded ({why})"
                        ),
                        Err(e) => tracing::error!(
                            error = %e,
                            "TLS certificate not reloaded ({why}); the previous one stays in use"
                        ),
                    }
                }
            })?;
        Ok(())
    }

    /// The files' modification times.
    fn stamps(&self) -> [Option<SystemTime>; 2] {
        [&self.cert, &self.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }
}

impl rustls::server::ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of two PEM files, checked to match.
fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_error = |path: &Path, e: &dyn std::fmt::Display| TlsConfigError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, &e))?;
    if chain.is_empty() {
        return Err(pem_error(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, &e))?;
    let pair = CertifiedKey::from_der(chain, key, &provider())?;
    // `from_der` lets a pair whose match it cannot tell through.
    pair.keys_match()?;
    Ok(pair)
}
