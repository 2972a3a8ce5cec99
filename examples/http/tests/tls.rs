//! HTTPS: corelane-http with `ServerBuilder::tls`, against curl, Python's
//! `ssl` and rustls's own client, and against clients that are not TLS at
//! all or never finish the handshake.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane::tls::rustls;
use corelane::{Accepted, Action, CloseReason, Context, Handler, Input, Output, Server};
use corelane_http::HttpOptions;
use corelane_test_support::TestServer;

/// A certificate for `localhost` and 127.0.0.1, and its key, written as
/// PEM files to a directory of the test's own (removed when dropped).
struct TestCert {
    dir: PathBuf,
}

/// A new self-signed certificate for `localhost` and 127.0.0.1, and its
/// key, as PEM.
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!("corelane-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = TestCert { dir };
        let (pem, key) = self_signed();
        cert.replace(&pem, &key);
        cert
    }

    /// Puts a new pair in place, each file renamed over the old one (as
    /// certificate renewals do), the key first.
    fn replace(&self, cert: &str, key: &str) {
        for (name, text) in [("key.pem", key), ("cert.pem", cert)] {
            let tmp = self.dir.join(format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.join(name)).unwrap();
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        corelane::tls::server_config_from_pem(&self.cert(), &self.dir.join("key.pem"), alpn)
            .expect("the test certificate loads")
    }

    /// A rustls client that trusts this certificate (and `more`, PEM).
    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client_trusting(&[])
    }

    fn client_trusting(&self, more: &[&str]) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        let own = std::fs::read_to_string(self.cert()).unwrap();
        for pem in more.iter().copied().chain([own.as_str()]) {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https_server(cert: &TestCert) -> TestServer {
    util::start_with(
        Server::builder()
            .workers(2)
            .tls(cert.config(&[b"http/1.1"])),
        HttpOptions::default(),
    )
}

/// A rustls client connection to `server`, as `localhost`.
fn connect(
    cert: &TestCert,
    server: &TestServer,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    connect_with(cert.client(), server)
}

/// A connection with the client configuration `client` (which remembers
/// the session tickets it got).
fn connect_with(
    client: Arc<rustls::ClientConfig>,
    server: &TestServer,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends `request` and reads to the end of the connection, which must be
/// a clean TLS close (rustls's client says `UnexpectedEof` for a close
/// without `close_notify`).
fn exchange<S: Read + Write>(tls: &mut S, request: &[u8]) -> Vec<u8> {
    tls.write_all(request).expect("the request is sent");
    let mut all = Vec::new();
    tls.read_to_end(&mut all)
        .expect("a whole reply and a clean TLS close");
    all
}

const PLAINTEXT_CLOSE: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn curl_over_https_keep_alive_and_a_body() {
    if !util::needs(util::has_tool("curl"), "curl") {
        return;
    }
    let cert = TestCert::new("curl");
    let server = https_server(&cert);
    let url = |path: &str| format!("https://localhost:{}{path}", server.addr.port());
    let cacert = cert.cert();
    let cacert = cacert.to_str().unwrap();
    // Two URLs in one run share one connection: one handshake.
    let out = util::curl(&["--cacert", cacert, &url("/plaintext"), &url("/json")]);
    assert_eq!(out, "Hello, World!{\"message\":\"Hello, World!\"}");
    server.wait_for("one handshake", util::WAIT, |m| {
        m.tls_handshakes == 1 && m.accepted == 1
    });
    let body: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let path = cert.dir.join("body");
    std::fs::write(&path, &body).unwrap();
    let data = format!("@{}", path.display());
    let echoed = util::curl(&["--cacert", cacert, "--data-binary", &data, &url("/echo")]);
    assert!(echoed == body, "the echoed body differs");
}

/// Answers every read with what the TLS handshake settled.
struct Negotiated;

impl Handler for Negotiated {
    type Conn = ();

    fn on_accept(&mut self, _: &Accepted, _: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _: &mut Context<'_>,
    ) -> Action {
        input.consume(input.bytes().len());
        let tls = input.tls().expect("a TLS connection");
        let alpn = tls.alpn.map(String::from_utf8_lossy).unwrap_or_default();
        let sni = tls.server_name.unwrap_or("-");
        output.extend_from_slice(format!("alpn={alpn} sni={sni}\n").as_bytes());
        Action::Close
    }
}

#[test]
fn alpn_and_sni_reach_the_handler_with_python_ssl() {
    let cert = TestCert::new("alpn");
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .tls(cert.config(&[b"h2", b"http/1.1"])),
        |_: &corelane::WorkerInfo| Negotiated,
    );
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={cafile:?})
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="localhost")
s.sendall(b"hello")
data = b""
while True:
    d = s.recv(1024)
    if not d:
        break
    data += d
print(s.selected_alpn_protocol(), data.decode(), end="")
"#,
        cafile = cert.cert().to_str().unwrap(),
        port = server.addr.port()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "http/1.1 alpn=http/1.1 sni=localhost\n"
    );
}

#[test]
fn a_close_sends_close_notify_after_the_whole_reply() {
    let cert = TestCert::new("close");
    let server = https_server(&cert);
    let mut tls = connect(&cert, &server);
    let all = exchange(
        &mut tls,
        b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\nGET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("Hello, World!"), "{text}");
    assert!(text.ends_with("{\"message\":\"Hello, World!\"}"), "{text}");
    server.wait_for("the close counted", util::WAIT, |m| {
        m.closed(CloseReason::Handler) == 1
    });
}

#[test]
fn plaintext_http_on_the_tls_port_is_refused_and_others_are_served() {
    let cert = TestCert::new("garbage");
    let server = https_server(&cert);
    let mut raw = server.connect();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert: {reply:?}");
    server.wait_for("the refusal counted", util::WAIT, |m| {
        m.closed(CloseReason::TlsError) == 1
    });
    // The worker goes on serving TLS clients.
    let all = exchange(&mut connect(&cert, &server), PLAINTEXT_CLOSE);
    assert!(all.ends_with(b"Hello, World!"));
}

#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_header_timeout() {
    let cert = TestCert::new("trickle");
    let server = util::start_with(
        Server::builder()
            .workers(1)
            .header_timeout(Some(Duration::from_millis(500)))
            .tls(cert.config(&[])),
        HttpOptions::default(),
    );
    let mut raw = server.connect();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first bytes of a ClientHello record, then nothing.
    raw.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let start = Instant::now();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    server.wait_for("the timeout counted", util::WAIT, |m| {
        m.closed(CloseReason::HeaderTimeout) == 1
    });
}

#[test]
fn a_client_that_stops_reading_gets_the_rest_when_it_reads_again() {
    let cert = TestCert::new("slow");
    let server = https_server(&cert);
    let mut tls = connect(&cert, &server);
    let body = vec![b'z'; 900_000];
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    tls.write_all(&request).unwrap();
    // The reply is larger than the socket buffers: the server waits on
    // writable edges (with plaintext held back in the output) meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let all = exchange(&mut tls, b"");
    assert!(all.ends_with(&body), "the echoed body is whole");
}

#[test]
fn sessions_resume_on_any_worker() {
    let cert = TestCert::new("resume");
    let server = https_server(&cert);
    let client = cert.client();
    let rounds = 8;
    for _ in 0..rounds {
        let all = exchange(
            &mut connect_with(Arc::clone(&client), &server),
            PLAINTEXT_CLOSE,
        );
        assert!(all.ends_with(b"Hello, World!"));
    }
    // The first handshake is full; every later one resumes with a ticket,
    // whichever of the two workers took it (they share the ticket key).
    server.wait_for("every handshake counted", util::WAIT, |m| {
        m.tls_handshakes == rounds
    });
    let per_worker = server.metrics.snapshot();
    let resumed: u64 = per_worker.iter().map(|w| w.tls_resumed).sum();
    assert_eq!(resumed, rounds - 1, "{per_worker:?}");
}

#[test]
fn a_certificate_reload_under_load_fails_no_request() {
    let cert = TestCert::new("reload");
    let files = corelane::tls::CertFiles::load(&cert.cert(), &cert.dir.join("key.pem")).unwrap();
    files.watch(Duration::from_millis(50)).unwrap();
    let server = util::start_with(
        Server::builder().workers(2).tls(
            files
                .server_config(&[b"http/1.1"], &corelane::tls::TicketKeys::new().unwrap())
                .unwrap(),
        ),
        HttpOptions::default(),
    );
    let old = std::fs::read_to_string(cert.cert()).unwrap();
    let (new_cert, new_key) = self_signed();
    // Full handshakes only: a resumed session presents no certificate.
    let mut client = Arc::unwrap_or_clone(cert.client_trusting(&[&new_cert]));
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let leaf = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let (old_leaf, new_leaf) = (leaf(&old), leaf(&new_cert));
    // New connections, one request each, until told to stop: which
    // certificate each saw.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, client, addr) = (Arc::clone(&stop), Arc::clone(&client), server.addr);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(Arc::clone(&client), name).unwrap();
                let tcp = TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let all = exchange(&mut tls, PLAINTEXT_CLOSE);
                assert!(all.ends_with(b"Hello, World!"), "{all:?}");
                seen.push(tls.conn.peer_certificates().unwrap()[0].clone());
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cert.replace(&new_cert, &new_key);
    std::thread::sleep(Duration::from_millis(500));
    // A broken key is refused; the new pair stays in use.
    cert.replace(
        &new_cert,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    assert!(files.reload().is_err(), "a broken key is refused");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.join().expect("no request failed");
    let first_new = seen
        .iter()
        .position(|c| *c == new_leaf)
        .expect("the new certificate served");
    assert!(seen[..first_new].iter().all(|c| *c == old_leaf));
    assert!(first_new > 0, "the old certificate served first");
    assert!(
        seen[first_new..].iter().all(|c| *c == new_leaf),
        "once reloaded, only the new certificate (also after the broken reload)"
    );
}

#[test]
fn sessions_resume_across_a_takeover() {
    let cert = TestCert::new("takeover");
    let files = corelane::tls::CertFiles::load(&cert.cert(), &cert.dir.join("key.pem")).unwrap();
    let tls_builder = || {
        // Each process makes its own keys; the new one takes the old one's.
        let keys = corelane::tls::TicketKeys::new().unwrap();
        let config = files.server_config(&[b"http/1.1"], &keys).unwrap();
        let opts = HttpOptions::default();
        Server::builder()
            .workers(1)
            .max_input(opts.max_input())
            .tls(config)
            .tls_ticket_keys(keys)
    };
    let mut old = TestServer::start(
        tls_builder(),
        corelane_http::Http::factory(HttpOptions::default()),
    );
    let client = cert.client();
    // A full handshake with the old process; the client keeps its ticket.
    let all = exchange(
        &mut connect_with(Arc::clone(&client), &old),
        PLAINTEXT_CLOSE,
    );
    assert!(all.ends_with(b"Hello, World!"));
    old.wait_for("the handshake", util::WAIT, |m| m.tls_handshakes == 1);

    let new = TestServer::start_at(
        tls_builder().takeover(true),
        old.addr,
        corelane_http::Http::factory(HttpOptions::default()),
    );
    // The old process hands over, drains (nothing is open) and returns.
    assert!(
        old.finished(Duration::from_secs(10))
            .is_some_and(|r| r.is_ok()),
        "the old process finished"
    );
    // The ticket from the old process resumes on the new one.
    let all = exchange(
        &mut connect_with(Arc::clone(&client), &new),
        PLAINTEXT_CLOSE,
    );
    assert!(all.ends_with(b"Hello, World!"));
    new.wait_for("a resumed handshake", util::WAIT, |m| {
        m.tls_handshakes == 1 && m.tls_resumed == 1
    });
}

/// Runs `openssl s_client` against `port` with `args`, sending `input`;
/// its output (stdout and stderr) once the server closes (`-ign_eof`:
/// the end of `input` does not end the session).
fn s_client(cert: &TestCert, port: u16, args: &[&str], input: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-CAfile", cert.cert().to_str().unwrap()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn openssl_s_client_alpn_sni_and_resumption() {
    if !util::needs(util::has_tool("openssl"), "openssl") {
        return;
    }
    let cert = TestCert::new("s_client");
    let server = https_server(&cert);
    let port = server.addr.port();
    let sess = cert.dir.join("session");
    let sess = sess.to_str().unwrap();
    let request = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for version in ["-tls1_3", "-tls1_2"] {
        let first = s_client(
            &cert,
            port,
            &[
                version,
                "-alpn",
                "http/1.1",
                "-servername",
                "localhost",
                "-sess_out",
                sess,
            ],
            request,
        );
        assert!(first.contains("ALPN protocol: http/1.1"), "{first}");
        assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
        assert!(first.contains("\nNew, "), "{first}");
        assert!(first.contains("Hello, World!"), "{first}");
        // The same server name: rustls resumes only a session made for it.
        let again = s_client(
            &cert,
            port,
            &[version, "-servername", "localhost", "-sess_in", sess],
            request,
        );
        assert!(again.contains("\nReused, "), "{version}: {again}");
        assert!(again.contains("Hello, World!"), "{again}");
    }
    server.wait_for("two full handshakes and two resumed", util::WAIT, |m| {
        m.tls_handshakes == 4 && m.tls_resumed == 2
    });
}

#[test]
fn wrk_over_https_has_no_errors() {
    if !util::needs(util::has_tool("wrk"), "wrk") {
        return;
    }
    let cert = TestCert::new("wrk");
    let server = https_server(&cert);
    let out = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d1s"])
        .arg(format!(
            "https://127.0.0.1:{}/plaintext",
            server.addr.port()
        ))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("errors"), "{text}");
    let requests: u64 = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, next)| *next == "requests")
        .and_then(|(n, _)| n.parse().ok())
        .expect("wrk's request count");
    assert!(requests > 100, "{text}");
    server.wait_for("a handshake per connection", util::WAIT, |m| {
        m.tls_handshakes >= 8
    });
}
