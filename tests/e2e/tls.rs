// Transmission security (issue 8, HIPAA 164.312(e)): TLS 1.2/1.3 on the client listener (TLS 1.1
// refused), client certificates, verified TLS to the upstream, certificate reload without restart.
// Every certificate is minted with rcgen when the test runs, in the test's own folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::support::*;

/// How long one TLS exchange with the gateway may take before the test gives up on it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by a [`Ca`], with its key, as PEM and DER.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for these names (DNS names or IP addresses).
    fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        self.issue(cn, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    fn client(&self, cn: &str) -> Leaf {
        self.issue(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA into store");
        roots
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.der.clone())]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("leaf key PEM")
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// `listen_options` YAML for a TLS listener with these files.
fn tls_listener(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "{{ tls: {{ certificate: {}, key: {}{extra} }} }}",
        json(cert),
        json(key)
    )
}

fn json(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("path as a YAML string")
}

/// What one HTTPS exchange with the gateway gave.
#[derive(Debug)]
struct Fetched {
    version: ProtocolVersion,
    suite: String,
    server_cert: Vec<u8>,
    status: u16,
}

/// `GET path` over TLS limited to `versions`, trusting `trust`, presenting `identity` if any.
/// `Err` when the handshake fails or no HTTP response comes back.
async fn fetch(
    addr: SocketAddr,
    trust: &Ca,
    versions: &[&'static SupportedProtocolVersion],
    identity: Option<&Leaf>,
    path: &str,
) -> Result<Fetched, String> {
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        fetch_inner(addr, trust, versions, identity, path),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
}

async fn fetch_inner(
    addr: SocketAddr,
    trust: &Ca,
    versions: &[&'static SupportedProtocolVersion],
    identity: Option<&Leaf>,
    path: &str,
) -> Result<Fetched, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(trust.roots());
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.private_key())
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (version, suite, server_cert) = {
        let (_, conn) = tls.get_ref();
        (
            conn.protocol_version().expect("negotiated version"),
            format!(
                "{:?}",
                conn.negotiated_cipher_suite().expect("suite").suite()
            ),
            conn.peer_certificates().expect("server certificate")[0].to_vec(),
        )
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A close without close_notify after a complete response is not our concern.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
                break
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    Ok(Fetched {
        version,
        suite,
        server_cert,
        status,
    })
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A TLS ClientHello record offering only `version` (no `supported_versions` extension, so
/// the legacy version field is the whole offer), with TLS 1.2-capable ECDHE suites, curves
/// and signature algorithms.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut body = Vec::new();
    body.extend(version);
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
                  // ECDHE-ECDSA/RSA-AES128-GCM-SHA256, and the CBC suites a TLS 1.1 client offers.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null only
    let mut exts = Vec::new();
    ext(&mut exts, 0x000a, &[0, 4, 0, 0x1d, 0, 0x17]); // groups: x25519, secp256r1
    ext(&mut exts, 0x000b, &[1, 0]); // point formats: uncompressed
    ext(&mut exts, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]); // sigalgs: ecdsa p256, pss, pkcs1
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends a raw ClientHello; returns the first record the server answers with (empty if it
/// just closes).
async fn raw_hello(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(hello).await.expect("send hello");
        let mut answer = vec![0u8; 7];
        let mut got = 0;
        while got < answer.len() {
            match tcp.read(&mut answer[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        answer.truncate(got);
        answer
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("the server answers or closes")
}

/// A stack whose client listener is TLS with a `localhost`/127.0.0.1 certificate of `ca`.
async fn tls_stack(dir: &Path, ca: &Ca, extra: &str) -> Stack {
    let leaf = ca.server("gateway", &["localhost", "127.0.0.1"]);
    let (cert, key) = leaf.write(dir, "server");
    let options = tls_listener(&cert, &key, extra);
    Stack::start_with(move |b| b.listen_options(&options)).await
}

#[tokio::test]
async fn tls_1_3_and_1_2_clients_are_served_with_aead_suites_and_forwarded_as_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let stack = tls_stack(dir.path(), &ca, "").await;
    let addr = stack.gateway.addr();

    let any = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!(any.version, ProtocolVersion::TLSv1_3, "1.3 is preferred");
    assert_eq!(any.status, 200);

    let v13 = fetch(addr, &ca, TLS13, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!((v13.version, v13.status), (ProtocolVersion::TLSv1_3, 200));

    let v12 = fetch(addr, &ca, TLS12, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!((v12.version, v12.status), (ProtocolVersion::TLSv1_2, 200));
    assert!(
        v12.suite.starts_with("TLS_ECDHE_")
            && (v12.suite.contains("GCM") || v12.suite.contains("CHACHA20")),
        "TLS 1.2 negotiates ECDHE with an AEAD: {}",
        v12.suite
    );

    let seen = stack.backend.wait_for_requests(3).await;
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.header("x-forwarded-proto"), Some("https"));
    }
}

#[tokio::test]
async fn tls_1_1_and_older_clients_are_refused_while_the_same_hello_as_1_2_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let stack = tls_stack(dir.path(), &ca, "").await;
    let addr = stack.gateway.addr();

    // Control: the hand-written hello is good enough for a TLS 1.2 ServerHello.
    let answer = raw_hello(addr, &client_hello([3, 3])).await;
    assert_eq!(answer.first(), Some(&22), "a handshake record: {answer:?}");
    assert_eq!(answer.get(5), Some(&2), "a ServerHello: {answer:?}");

    // The same offer limited to TLS 1.1 (and 1.0, SSL 3.0): a protocol_version alert or a
    // close, never a ServerHello.
    for version in [[3, 2], [3, 1], [3, 0]] {
        let answer = raw_hello(addr, &client_hello(version)).await;
        match answer.first() {
            None => {}
            Some(21) => assert_eq!(
                answer.get(6),
                Some(&70),
                "{version:?}: protocol_version alert: {answer:?}"
            ),
            Some(_) => panic!("{version:?} must be refused, got {answer:?}"),
        }
    }
    assert_backend_untouched(&stack);
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let stack = tls_stack(dir.path(), &ca, "").await;
    let response = stack
        .client
        .get(stack.url("/fhir/metadata"))
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await;
    assert!(response.is_err(), "plain HTTP is not served: {response:?}");
    assert_backend_untouched(&stack);
}

#[tokio::test]
async fn required_client_certificates_refuse_none_and_foreign_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let clients = Ca::new("client CA");
    let foreign = Ca::new("someone else's CA");
    let client_ca = write_pem(dir.path(), "clients.pem", &clients.pem());
    let extra = format!(", client_ca: {}, client_auth: required", json(&client_ca));
    let stack = tls_stack(dir.path(), &ca, &extra).await;
    let addr = stack.gateway.addr();

    for versions in [TLS13, TLS12] {
        let none = fetch(addr, &ca, versions, None, "/fhir/metadata").await;
        assert!(none.is_err(), "no client certificate: {none:?}");
        let other = foreign.client("system-a");
        let refused = fetch(addr, &ca, versions, Some(&other), "/fhir/metadata").await;
        assert!(refused.is_err(), "certificate of another CA: {refused:?}");
    }
    assert_backend_untouched(&stack);

    let good = clients.client("system-a");
    for versions in [TLS13, TLS12] {
        let ok = fetch(addr, &ca, versions, Some(&good), "/fhir/metadata")
            .await
            .unwrap();
        assert_eq!(ok.status, 200);
    }
    assert_eq!(stack.backend.request_count(), 2);
}

#[tokio::test]
async fn optional_client_certificates_allow_none_but_still_refuse_foreign_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let clients = Ca::new("client CA");
    let foreign = Ca::new("someone else's CA");
    let client_ca = write_pem(dir.path(), "clients.pem", &clients.pem());
    let extra = format!(", client_ca: {}, client_auth: optional", json(&client_ca));
    let stack = tls_stack(dir.path(), &ca, &extra).await;
    let addr = stack.gateway.addr();

    let refused = fetch(
        addr,
        &ca,
        BOTH,
        Some(&foreign.client("x")),
        "/fhir/metadata",
    )
    .await;
    assert!(refused.is_err(), "certificate of another CA: {refused:?}");
    assert_backend_untouched(&stack);
    let none = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!(none.status, 200);
    let good = fetch(
        addr,
        &ca,
        BOTH,
        Some(&clients.client("x")),
        "/fhir/metadata",
    )
    .await
    .unwrap();
    assert_eq!(good.status, 200);
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let stack = tls_stack(dir.path(), &ca, ", reload_interval: 100ms").await;
    let addr = stack.gateway.addr();
    let first = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    let pid = stack.gateway.pid();

    // Renewal: a new certificate and key, each moved into place in one rename.
    let renewed = ca.server("gateway renewed", &["localhost", "127.0.0.1"]);
    let staged = tempfile::tempdir_in(dir.path()).unwrap();
    let (cert, key) = renewed.write(staged.path(), "server");
    std::fs::rename(&key, dir.path().join("server.key")).unwrap();
    std::fs::rename(&cert, dir.path().join("server.crt")).unwrap();
    let served = wait_for_certificate(addr, &ca, &renewed.der).await;
    assert_ne!(first.server_cert, served.server_cert);
    assert_eq!(served.status, 200);
    assert_eq!(stack.gateway.pid(), pid);
    assert!(stack.gateway.exit_status().is_none(), "no restart");
    wait_for_metric(
        &stack,
        "fhirwall_tls_certificate_reloads_total",
        "success",
        1.0,
    )
    .await;

    // A broken certificate file is refused; the renewed certificate keeps serving.
    std::fs::write(
        dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    wait_for_metric(
        &stack,
        "fhirwall_tls_certificate_reloads_total",
        "failure",
        1.0,
    )
    .await;
    let still = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!(still.server_cert, renewed.der);
    assert_eq!(still.status, 200);
    assert!(
        stack
            .gateway
            .stderr()
            .contains("still serving the previous certificate"),
        "the refusal is logged"
    );
    // A certificate that does not match the key is refused too.
    let mismatched = ca.server("other key", &["localhost"]);
    std::fs::write(dir.path().join("server.crt"), &mismatched.cert_pem).unwrap();
    wait_for_metric(
        &stack,
        "fhirwall_tls_certificate_reloads_total",
        "failure",
        2.0,
    )
    .await;
    let still = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_eq!(still.server_cert, renewed.der);
    let expiry = stack
        .gateway
        .metric(
            "fhirwall_tls_certificate_expiry_timestamp_seconds",
            &[("listener", &addr.to_string())],
        )
        .await
        .expect("expiry gauge");
    assert!(expiry > unix_now() as f64, "a future notAfter: {expiry}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    // No scheduled check during the test: only the signal can explain the new certificate.
    let stack = tls_stack(dir.path(), &ca, ", reload_interval: 1h").await;
    let addr = stack.gateway.addr();
    wait_for_stderr(&stack.gateway, "watching the TLS certificate files").await;
    let renewed = ca.server("gateway renewed", &["localhost", "127.0.0.1"]);
    renewed.write(dir.path(), "server");
    let before = fetch(addr, &ca, BOTH, None, "/fhir/metadata")
        .await
        .unwrap();
    assert_ne!(
        before.server_cert, renewed.der,
        "not reloaded without the signal"
    );

    stack.gateway.signal("HUP");
    let served = wait_for_certificate(addr, &ca, &renewed.der).await;
    assert_eq!(served.status, 200);
    assert!(
        stack.gateway.exit_status().is_none(),
        "SIGHUP does not stop the gateway"
    );
}

/// Fetches until the server presents `der`, up to 20 s.
async fn wait_for_certificate(addr: SocketAddr, ca: &Ca, der: &[u8]) -> Fetched {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fetched = fetch(addr, ca, BOTH, None, "/fhir/metadata").await.unwrap();
        if fetched.server_cert == der {
            return fetched;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the reload counter for `result` reaches `at_least`, up to 20 s.
async fn wait_for_metric(stack: &Stack, name: &str, result: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = stack
            .gateway
            .metric(name, &[("result", result)])
            .await
            .unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{{result={result}}} stayed at {value}, expected {at_least}\n{}",
            stack.gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_backend_untouched(stack: &Stack) {
    stack.assert_backend_untouched();
}

// === upstream TLS ===

/// A TLS front for a plain test backend: terminates TLS with `leaf` (requiring a client
/// certificate of `client_ca` when given) and relays the bytes to `backend`.
async fn tls_front(backend: SocketAddr, leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(leaf.chain(), leaf.private_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A plain-listener gateway in front of `upstream_url` with these extra `upstream` keys.
async fn gateway_to(issuer: &TestIssuer, upstream_url: &str, upstream_keys: &str) -> Gateway {
    Gateway::builder()
        .upstream(upstream_url)
        .issuer(issuer)
        .policy_yaml(POLICY)
        .config_override(&format!("{{ upstream: {{ {upstream_keys} }} }}"))
        .start()
        .await
}

async fn status_of(gateway: &Gateway, path: &str) -> u16 {
    http_client()
        .get(gateway.url(path))
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_upstream_certificate_from_an_untrusted_ca_is_refused_and_the_right_ca_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let upstream_ca = Ca::new("upstream CA");
    let other_ca = Ca::new("unrelated CA");
    let front = tls_front(
        backend.addr(),
        &upstream_ca.server("fhir backend", &["127.0.0.1"]),
        None,
    )
    .await;
    let url = format!("https://{front}");
    let right = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca.pem());
    let wrong = write_pem(dir.path(), "other-ca.pem", &other_ca.pem());

    let gateway = gateway_to(&issuer, &url, &format!("ca: {}", json(&wrong))).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 502);
    assert_eq!(backend.request_count(), 0, "nothing reaches the backend");
    drop(gateway);

    let gateway = gateway_to(&issuer, &url, &format!("ca: {}", json(&right))).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 200);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn the_upstream_certificate_must_name_the_sni_which_can_be_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let upstream_ca = Ca::new("upstream CA");
    // Valid for a DNS name only, reached by IP address.
    let front = tls_front(
        backend.addr(),
        &upstream_ca.server("fhir backend", &["fhir.internal"]),
        None,
    )
    .await;
    let url = format!("https://{front}");
    let ca = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca.pem());

    let gateway = gateway_to(&issuer, &url, &format!("ca: {}", json(&ca))).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 502);
    assert_eq!(backend.request_count(), 0);
    drop(gateway);

    let keys = format!("ca: {}, sni: fhir.internal", json(&ca));
    let gateway = gateway_to(&issuer, &url, &keys).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 200);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let upstream_ca = Ca::new("upstream CA");
    let gateway_clients = Ca::new("gateway client CA");
    let front = tls_front(
        backend.addr(),
        &upstream_ca.server("fhir backend", &["127.0.0.1"]),
        Some(&gateway_clients),
    )
    .await;
    let url = format!("https://{front}");
    let ca = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca.pem());

    let gateway = gateway_to(&issuer, &url, &format!("ca: {}", json(&ca))).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 502);
    assert_eq!(backend.request_count(), 0);
    drop(gateway);

    let (cert, key) = gateway_clients
        .client("fhirwall")
        .write(dir.path(), "gw-client");
    let keys = format!(
        "ca: {}, client_certificate: {}, client_key: {}",
        json(&ca),
        json(&cert),
        json(&key)
    );
    let gateway = gateway_to(&issuer, &url, &keys).await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 200);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn check_reports_a_key_that_does_not_match_its_certificate_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let (cert, _) = ca.server("a", &["localhost"]).write(dir.path(), "a");
    let (_, key) = ca.server("b", &["localhost"]).write(dir.path(), "b");
    let config = Gateway::builder()
        .listen_options(&tls_listener(&cert, &key, ""))
        .upstream("http://127.0.0.1:1")
        .issuer_url("https://idp.example.org", &["fhir"])
        .write_config(dir.path(), "127.0.0.1:8443".parse().unwrap(), free_port());
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("key:"))
        .expect("a key line")
        + 1;
    let (code, stdout, stderr) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains(&format!("config.yaml:{line}:"))
            && all.contains("listen[0].tls.key")
            && all.contains("does not belong to the first certificate"),
        "{all}"
    );
}

#[tokio::test]
async fn verify_tls_false_is_explicit_and_loud_and_plain_transports_are_logged() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let unknown_ca = Ca::new("unknown CA");
    let front = tls_front(
        backend.addr(),
        &unknown_ca.server("fhir backend", &["127.0.0.1"]),
        None,
    )
    .await;
    let gateway = gateway_to(&issuer, &format!("https://{front}"), "verify_tls: false").await;
    assert_eq!(status_of(&gateway, "/fhir/metadata").await, 200);
    wait_for_stderr(
        &gateway,
        "TLS CERTIFICATE VERIFICATION OF THE UPSTREAM IS DISABLED",
    )
    .await;
    // The loopback plain listener is logged too.
    wait_for_stderr(&gateway, "listener serves clients in plain HTTP").await;
    drop(gateway);

    let gateway = gateway_to(&issuer, &backend.base_url(), "").await;
    wait_for_stderr(&gateway, "upstream is reached in plain HTTP").await;
}

/// Waits until the gateway's stderr (read by a thread) contains `needle`, up to 10 s.
async fn wait_for_stderr(gateway: &Gateway, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gateway.stderr().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stderr never said {needle:?}:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
