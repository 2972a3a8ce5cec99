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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
    CertFiles::load(cert, key)?.server_config(alpn, &TicketKeys::new()?)
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
    /// Session tickets are sealed with `tickets` (give the same keys to
    /// [`ServerBuilder::tls_ticket_keys`](crate::ServerBuilder::tls_ticket_keys)
    /// so they survive a takeover).
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        tickets: &Arc<TicketKeys>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Stateless session tickets: one key for every worker (they share
        // this configuration).
        config.ticketer = Arc::clone(tickets) as Arc<dyn rustls::server::ProducesTickets>;
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

/// The keys that seal stateless session tickets (ChaCha20-Poly1305), shared
/// by every worker of a server: a session resumes on any worker. The key
/// in use is replaced every [`ROTATION`](TicketKeys::ROTATION); tickets
/// sealed with the one before stay valid for one more period. A process
/// that takes over ([`ServerBuilder::takeover`](crate::ServerBuilder::takeover))
/// gets the keys of the one it replaces over the control socket, when both
/// were given theirs with
/// [`ServerBuilder::tls_ticket_keys`](crate::ServerBuilder::tls_ticket_keys):
/// sessions resume across the restart.
pub struct TicketKeys {
    keys: Mutex<Keys>,
    rng: ring::rand::SystemRandom,
}

struct Keys {
    current: Key,
    previous: Option<Key>,
    since: Instant,
}

/// One key and the id that prefixes its tickets.
#[derive(Clone, Copy)]
struct Key {
    id: [u8; 4],
    secret: [u8; 32],
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys { .. }")
    }
}

impl TicketKeys {
    /// How long a key seals new tickets.
    pub const ROTATION: Duration = Duration::from_secs(6 * 60 * 60);
    const NONCE: usize = 12;

    /// Fresh random keys.
    ///
    /// # Errors
    ///
    /// The system's random source failed.
    pub fn new() -> Result<Arc<TicketKeys>, rustls::Error> {
        let rng = ring::rand::SystemRandom::new();
        let current = Key::random(&rng)?;
        Ok(Arc::new(TicketKeys {
            keys: Mutex::new(Keys {
                current,
                previous: None,
                since: Instant::now(),
            }),
            rng,
        }))
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys as one line of text (hex), for the process taking over.
    pub(crate) fn export(&self) -> String {
        let keys = self.keys();
        [Some(keys.current), keys.previous]
            .iter()
            .flatten()
            .map(|k| hex(&[&k.id[..], &k.secret[..]].concat()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Takes the keys of [`export`](Self::export)'s line (the current key
    /// first): tickets the other process sealed open here.
    pub(crate) fn import(&self, line: &str) -> Result<(), &'static str> {
        let parsed: Vec<Key> = line
            .split(' ')
            .map(|word| {
                let bytes = unhex(word).ok_or("not hex")?;
                let (id, secret) = bytes.split_at_checked(4).ok_or("too short")?;
                Ok(Key {
                    id: id.try_into().map_err(|_| "bad id")?,
                    secret: secret.try_into().map_err(|_| "not a 32-byte key")?,
                })
            })
            .collect::<Result<_, &'static str>>()?;
        let [current, rest @ ..] = parsed.as_slice() else {
            return Err("no key");
        };
        let mut keys = self.keys();
        keys.current = *current;
        keys.previous = rest.first().copied();
        keys.since = Instant::now();
        Ok(())
    }

    fn aead(key: &Key) -> ring::aead::LessSafeKey {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key.secret)
            .expect("a 32-byte ChaCha20-Poly1305 key");
        ring::aead::LessSafeKey::new(unbound)
    }
}

impl Key {
    fn random(rng: &ring::rand::SystemRandom) -> Result<Key, rustls::Error> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 36];
        rng.fill(&mut bytes)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let (id, secret) = bytes.split_at(4);
        Ok(Key {
            id: id.try_into().unwrap_or_default(),
            secret: secret.try_into().unwrap_or([0; 32]),
        })
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // A ticket lives as long as its key opens it: two periods at most.
        (2 * Self::ROTATION.as_secs()) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use ring::rand::SecureRandom;
        let key = {
            let mut keys = self.keys();
            if keys.since.elapsed() >= Self::ROTATION {
                let fresh = Key::random(&self.rng).ok()?;
                keys.previous = Some(keys.current);
                keys.current = fresh;
                keys.since = Instant::now();
            }
            keys.current
        };
        let mut nonce = [0u8; Self::NONCE];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(4 + Self::NONCE + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let sealed = &mut out[4 + Self::NONCE..];
        let tag = Self::aead(&key)
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&key.id),
                sealed,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(4)?;
        let (nonce, sealed) = rest.split_at_checked(Self::NONCE)?;
        let key = {
            let keys = self.keys();
            [Some(keys.current), keys.previous]
                .into_iter()
                .flatten()
                .find(|k| k.id == id)?
        };
        let mut buf = sealed.to_vec();
        let plain = Self::aead(&key)
            .open_in_place(
                ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                ring::aead::Aad::from(&key.id),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(plain);
        Some(buf)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    #[test]
    fn tickets_open_with_their_keys_only_and_keys_travel_as_text() {
        let a = TicketKeys::new().unwrap();
        let b = TicketKeys::new().unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(b.decrypt(&ticket), None, "another server's keys");
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(a.decrypt(&forged), None, "a changed ticket");
        // A process taking over gets the keys as a line of text.
        b.import(&a.export()).unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert!(b.import("zz").is_err());
        assert!(b.import("00112233").is_err());
    }
}
