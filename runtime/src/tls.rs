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
//! The crypto provider is *ring*: it builds from crates with a C compiler
//! alone (aws-lc-rs needs cmake, and more time to build).

use std::path::Path;
use std::sync::Arc;

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
/// tickets whose key all workers share (rotated every 6 hours).
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless session tickets: one key for every worker (they share
    // this configuration), rotated every 6 hours, the previous key still
    // accepted for the 6 hours after.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
