//! The real authorization server of the end-to-end suites: `node tests/idp/server.mjs`
//! (oidc-provider, dev/test only) on a loopback port, its clients, and key sets for it.
//! Used by tests/real_idp.rs and tests/real_idp_introspection.rs.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{http_client, TEST_AUDIENCE};

/// The FHIR base the gateway protects: the resource indicator (and so `aud`) of its tokens.
pub const FHIR_BASE: &str = TEST_AUDIENCE;

/// Another resource server known to the provider: its tokens are not for the gateway.
pub const OTHER_RESOURCE: &str = "https://other-api.fhirwall.test/fhir";

/// A resource the provider gives opaque (introspection-only) tokens for.
pub const OPAQUE_RESOURCE: &str = "https://opaque.fhirwall.test/fhir";

/// The patient `fhirwall-patient`'s tokens are bound to (tests/idp/server.mjs, CLIENTS).
pub const PATIENT: &str = "pat-123";

/// Another patient.
pub const OTHER_PATIENT: &str = "pat-456";

/// The gateway's own client at the provider (client_secret_basic), for introspection.
pub const GATEWAY_CLIENT: &str = "fhirwall-gateway";

/// Its secret (a public test value, tests/idp/server.mjs).
pub const GATEWAY_SECRET: &str = "gateway-secret-basic";

/// How long the provider may take to print its ready line.
pub const IDP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The clients of tests/idp/server.mjs.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// `system/Patient.rs system/Observation.rs user/Patient.r openid`.
    System,
    /// `patient/Patient.r patient/Patient.rs patient/Observation.rs launch/patient openid`,
    /// tokens carry `patient: pat-123`.
    Patient,
    /// `patient/Patient.r patient/Observation.rs`, no patient registered.
    NoContext,
    /// `system/Patient.rs`, tokens live 2 s.
    ShortLived,
}

pub fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Panics with the setup step when the provider's packages are not installed.
pub fn require_node_modules() {
    if !idp_dir().join("node_modules/oidc-provider").is_dir() {
        panic!("tests/idp/node_modules is missing: run `npm ci --prefix tests/idp` first");
    }
}

// === impl KeySet ===

/// RSA signing keys made by the provider's own `keygen`, as private JWKs.
pub struct KeySet {
    keys: Vec<Value>,
}

impl KeySet {
    /// One new RSA 2048 key per `kid`.
    pub fn generate(kids: &[&str]) -> Self {
        require_node_modules();
        let output = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .arg("keygen")
            .args(kids)
            .stdin(Stdio::null())
            .output()
            .expect("run `node` (is Node.js installed?)");
        assert!(
            output.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let jwks: Value = serde_json::from_slice(&output.stdout).expect("keygen prints JSON");
        let keys = jwks["keys"].as_array().expect("keys").clone();
        assert_eq!(keys.len(), kids.len());
        Self { keys }
    }

    /// A private JWKS with these keys in this order (the first one signs).
    pub fn only(&self, kids: &[&str]) -> Value {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| {
                self.keys
                    .iter()
                    .find(|key| key["kid"] == *kid)
                    .unwrap_or_else(|| panic!("no key {kid}"))
                    .clone()
            })
            .collect();
        json!({ "keys": keys })
    }
}

// === impl Idp ===

/// `node tests/idp/server.mjs` on a loopback port; killed when dropped.
pub struct Idp {
    dir: tempfile::TempDir,
    port: u16,
    process: Mutex<Option<IdpProcess>>,
    /// Bumped on every restart so each key file has its own name.
    generation: Mutex<u32>,
}

pub struct IdpProcess {
    child: Child,
    /// Held open: the server exits when it closes (`--exit-on-stdin-close`), so a test
    /// binary that dies without dropping this does not leave the server behind.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Idp {
    /// Starts the provider on a free port with these signing keys (a private JWKS).
    pub fn start(jwks: &Value) -> Self {
        require_node_modules();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut idp = Self {
            dir,
            port: 0,
            process: Mutex::new(None),
            generation: Mutex::new(0),
        };
        let (process, port) = idp.spawn(jwks, 0).unwrap_or_else(|e| panic!("{e}"));
        idp.port = port;
        *idp.process.lock() = Some(process);
        idp
    }

    /// Stops the provider and starts it again on the same port (same issuer) with other
    /// keys: how a provider's key set is rotated here.
    pub fn restart(&self, jwks: &Value) {
        if let Some(mut old) = self.process.lock().take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        // The port was ours a moment ago; another process could take it in between, in
        // which case the restart is retried briefly before giving up.
        let mut last_error = String::new();
        for _ in 0..20 {
            match self.spawn(jwks, self.port) {
                Ok((process, port)) => {
                    assert_eq!(port, self.port);
                    *self.process.lock() = Some(process);
                    return;
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the IdP did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Spawns the server and waits for its `READY` line; returns it and its port.
    pub fn spawn(&self, jwks: &Value, port: u16) -> Result<(IdpProcess, u16), String> {
        let keys_file = {
            let mut generation = self.generation.lock();
            *generation += 1;
            self.dir.path().join(format!("keys-{generation}.json"))
        };
        std::fs::write(&keys_file, jwks.to_string()).expect("write keys file");
        let mut child = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .arg(port.to_string())
            .arg("--exit-on-stdin-close")
            .env("IDP_RESOURCES", format!("{FHIR_BASE},{OTHER_RESOURCE}"))
            .env("IDP_OPAQUE_RESOURCES", OPAQUE_RESOURCE)
            .env("IDP_KEYS_FILE", &keys_file)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run `node` (is Node.js installed?): {e}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = ready_tx.send(url.to_owned());
                }
            }
        });
        let process = IdpProcess {
            child,
            _stdin: stdin,
            stderr,
        };
        match ready_rx.recv_timeout(IDP_READY_TIMEOUT) {
            Ok(url) => {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse().ok())
                    .unwrap_or_else(|| panic!("READY line without a port: {url}"));
                Ok((process, port))
            }
            Err(_) => {
                let mut process = process;
                let _ = process.child.kill();
                let _ = process.child.wait();
                std::thread::sleep(Duration::from_millis(50));
                Err(format!(
                    "the IdP did not print READY within {IDP_READY_TIMEOUT:?}; stderr:\n{}",
                    String::from_utf8_lossy(&process.stderr.lock())
                ))
            }
        }
    }

    /// The issuer, `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        get_json(&format!(
            "{}/.well-known/openid-configuration",
            self.issuer()
        ))
        .await
    }

    /// The `kid`s of the published JWKS, in order.
    pub async fn published_kids(&self) -> Vec<String> {
        let jwks_uri = self.discovery().await["jwks_uri"]
            .as_str()
            .expect("jwks_uri")
            .to_owned();
        get_json(&jwks_uri).await["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| key["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    /// The token endpoint's JSON answer to a `client_credentials` request (RFC 6749 §4.4)
    /// with `client_secret_basic`, for `resource` (RFC 8707) or the provider's default.
    pub async fn token_response(
        &self,
        client: Client,
        scope: &str,
        resource: Option<&str>,
    ) -> Value {
        let (id, secret) = client.credentials();
        let endpoint = self.discovery().await["token_endpoint"]
            .as_str()
            .expect("token_endpoint")
            .to_owned();
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let response = http_client()
            .post(&endpoint)
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        response.json().await.expect("token endpoint answers JSON")
    }

    /// An access token, or a panic showing the provider's error.
    pub async fn token(&self, client: Client, scope: &str, resource: Option<&str>) -> String {
        let answer = self.token_response(client, scope, resource).await;
        match answer["access_token"].as_str() {
            Some(token) => {
                assert_eq!(answer["token_type"], "Bearer", "{answer}");
                token.to_owned()
            }
            None => panic!(
                "{client:?} got no token for {scope:?}: {answer}\nIdP stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Verifies `token` against the JWKS the provider publishes, as any relying party would.
    pub async fn verify_with_published_keys(&self, token: &str, audience: &str) -> Value {
        let jwks_uri = self.discovery().await["jwks_uri"]
            .as_str()
            .expect("jwks_uri")
            .to_owned();
        let jwks: JwkSet = serde_json::from_value(get_json(&jwks_uri).await).expect("a JWKS");
        for key in &jwks.keys {
            let text = serde_json::to_value(key).unwrap();
            assert!(
                text.get("d").is_none(),
                "private key material published: {text}"
            );
        }
        let header = decode_header(token).expect("a JWS");
        let jwk = jwks
            .find(header.kid.as_deref().expect("kid"))
            .expect("the signing key is published");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[self.issuer()]);
        decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).expect("key"),
            &validation,
        )
        .expect("the token verifies")
        .claims
    }

    /// Stops the provider (it stays down until [`Idp::restart`]).
    pub fn stop(&self) {
        if let Some(mut old) = self.process.lock().take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
    }

    /// RFC 7009: `client` revokes its own `token` at the provider.
    pub async fn revoke(&self, client: Client, token: &str) {
        let (id, secret) = client.credentials();
        let endpoint = self.discovery().await["revocation_endpoint"]
            .as_str()
            .expect("revocation_endpoint")
            .to_owned();
        let response = http_client()
            .post(&endpoint)
            .basic_auth(id, Some(secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        assert_eq!(response.status(), 200, "revocation at the provider");
    }

    /// RFC 7662 as the gateway's client sees it: the provider's answer about `token`.
    pub async fn introspect(&self, token: &str) -> Value {
        let endpoint = self.discovery().await["introspection_endpoint"]
            .as_str()
            .expect("introspection_endpoint")
            .to_owned();
        http_client()
            .post(&endpoint)
            .basic_auth(GATEWAY_CLIENT, Some(GATEWAY_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"))
            .json()
            .await
            .expect("JSON")
    }

    /// What the current server process wrote to stderr.
    pub fn stderr(&self) -> String {
        match &*self.process.lock() {
            Some(process) => String::from_utf8_lossy(&process.stderr.lock()).into_owned(),
            None => String::new(),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- IdP stderr ---\n{}", self.stderr());
        }
        if let Some(mut process) = self.process.lock().take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

// === impl Client ===

impl Client {
    /// `(client_id, client_secret)` as registered in tests/idp/server.mjs.
    pub fn credentials(self) -> (&'static str, &'static str) {
        match self {
            Client::System => ("fhirwall-system", "system-secret"),
            Client::Patient => ("fhirwall-patient", "patient-secret"),
            Client::NoContext => ("fhirwall-no-context", "no-context-secret"),
            Client::ShortLived => ("fhirwall-short-lived", "short-lived-secret"),
        }
    }
}

pub async fn get_json(url: &str) -> Value {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("JSON")
}

/// Reads a child pipe to its end on a thread, so the child never blocks on a full pipe.
pub fn drain(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buffer
}
