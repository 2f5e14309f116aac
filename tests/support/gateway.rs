//! `Gateway`: the real `fhirwall` binary, configured by a builder, on loopback ports.
//!
//! The gateway is a black box: a config file in a temporary folder, `fhirwall serve
//! --config FILE`, HTTP to its ports, and its audit file read back. The child is killed when
//! the `Gateway` is dropped; if the test is panicking, its stderr is printed first.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use serde_yaml::{Mapping, Value as Yaml};

use super::backend::TestBackend;
use super::issuer::TestIssuer;
use super::TEST_AUDIENCE;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fhirwall");

/// How long `start` waits for `/readyz` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Name of the audit file in the gateway's folder.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// A small policy for tests that do not care: public `/metadata`, patient-scoped
/// `Patient` read and `Observation` search.
pub const SAMPLE_POLICY: &str = r#"version: 1
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r, patient/Patient.rs, patient/Patient.read] }
    patient: { segment: id }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.s, patient/Observation.rs, patient/Observation.read] }
    patient: { query: patient }
"#;

/// Builds the config of a [`Gateway`]; see [`Gateway::builder`].
#[derive(Debug, Clone, Default)]
pub struct GatewayBuilder {
    upstream: Option<String>,
    issuers: Vec<Yaml>,
    policy: Option<PolicySource>,
    overrides: Vec<Yaml>,
    listen_options: Option<Yaml>,
    env: Vec<(String, String)>,
    ready_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
enum PolicySource {
    File(PathBuf),
    Inline(String),
}

/// Why a gateway did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, if the process ended.
    pub status: Option<ExitStatus>,
    /// What it wrote to stderr.
    pub stderr: String,
    /// What it wrote to stdout.
    pub stdout: String,
    /// The config it was given.
    pub config: String,
}

/// A running `fhirwall serve`.
pub struct Gateway {
    /// Behind a lock so `&self` methods can check whether it exited.
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    config: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

// === impl GatewayBuilder ===

impl GatewayBuilder {
    /// `upstream.url`.
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }

    /// Forwards to `backend`.
    pub fn backend(self, backend: &TestBackend) -> Self {
        self.upstream(backend.base_url())
    }

    /// Trusts `issuer` with audience [`TEST_AUDIENCE`] (JWKS found by discovery,
    /// `jwks_min_refresh_interval: 1s`).
    pub fn issuer(self, issuer: &TestIssuer) -> Self {
        self.issuer_url(&issuer.issuer_url(), &[TEST_AUDIENCE])
    }

    /// Trusts the issuer at `url` with these audiences.
    pub fn issuer_url(self, url: &str, audiences: &[&str]) -> Self {
        let entry = format!(
            "{{ issuer: {}, audiences: {}, jwks_min_refresh_interval: 1s }}",
            yaml_str(url),
            serde_json::to_string(audiences).expect("strings"),
        );
        self.issuer_yaml(&entry)
    }

    /// Adds one `issuers` entry given as YAML, e.g.
    /// `"{ issuer: http://127.0.0.1:1, audiences: [a], jwks_uri: http://127.0.0.1:1/k }"`.
    pub fn issuer_yaml(mut self, entry: &str) -> Self {
        self.issuers.push(parse_yaml(entry));
        self
    }

    /// `policy:` names this file (absolute path).
    pub fn policy_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy = Some(PolicySource::File(path.into()));
        self
    }

    /// Writes this policy to `policy.yaml` next to the config.
    pub fn policy_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.policy = Some(PolicySource::Inline(yaml.into()));
        self
    }

    /// Deep-merges a YAML mapping into the generated config: mappings merge key by key,
    /// anything else replaces, and `null` deletes the key. Applied in call order, after the
    /// generated keys. E.g. `"{ audit: { flush_interval: 1s }, token_cache: { max_entries: 1 } }"`.
    pub fn config_override(mut self, yaml: &str) -> Self {
        self.overrides.push(parse_yaml(yaml));
        self
    }

    /// Writes the proxy listener as a mapping, `listen: [{ address: ADDR, ..options }]`, e.g.
    /// `"{ tls: { certificate: /tmp/c.pem, key: /tmp/k.pem } }"` or `"{ plaintext: true }"`.
    pub fn listen_options(mut self, yaml: &str) -> Self {
        self.listen_options = Some(parse_yaml(yaml));
        self
    }

    /// Sets an environment variable of the child (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// How long [`GatewayBuilder::start`] waits for readiness (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// The config YAML this builder would write for these ports and folder.
    pub fn render_config(&self, dir: &Path, listen: SocketAddr, admin: SocketAddr) -> String {
        let mut root = Mapping::new();
        match &self.listen_options {
            None => {
                root.insert("listen".into(), listen.to_string().into());
            }
            Some(options) => {
                let mut entry = Mapping::new();
                entry.insert("address".into(), listen.to_string().into());
                let mut entry = Yaml::Mapping(entry);
                merge(&mut entry, options);
                root.insert("listen".into(), Yaml::Sequence(vec![entry]));
            }
        }
        root.insert("admin_listen".into(), admin.to_string().into());
        let policy = match &self.policy {
            Some(PolicySource::File(path)) => path.display().to_string(),
            Some(PolicySource::Inline(_)) | None => "policy.yaml".to_owned(),
        };
        root.insert("policy".into(), policy.into());
        if let Some(url) = &self.upstream {
            root.insert(
                "upstream".into(),
                parse_yaml(&format!("{{ url: {} }}", yaml_str(url))),
            );
        }
        if !self.issuers.is_empty() {
            root.insert("issuers".into(), Yaml::Sequence(self.issuers.clone()));
        }
        let audit = format!(
            "{{ path: {}, flush_interval: 20ms }}",
            yaml_str(&dir.join(AUDIT_FILE).display().to_string())
        );
        root.insert("audit".into(), parse_yaml(&audit));
        root.insert("log".into(), parse_yaml("{ level: info }"));
        let mut config = Yaml::Mapping(root);
        for patch in &self.overrides {
            merge(&mut config, patch);
        }
        serde_yaml::to_string(&config).expect("config serializes")
    }

    /// Writes `config.yaml` (and `policy.yaml` when inline) into `dir` with these ports;
    /// returns the config path. For `fhirwall check` tests.
    pub fn write_config(&self, dir: &Path, listen: SocketAddr, admin: SocketAddr) -> PathBuf {
        let policy = match &self.policy {
            Some(PolicySource::Inline(yaml)) => Some(yaml.as_str()),
            Some(PolicySource::File(_)) => None,
            None => Some(SAMPLE_POLICY),
        };
        if let Some(policy) = policy {
            std::fs::write(dir.join("policy.yaml"), policy).expect("write policy");
        }
        let path = dir.join("config.yaml");
        std::fs::write(&path, self.render_config(dir, listen, admin)).expect("write config");
        path
    }

    /// Starts the gateway and waits until `/readyz` answers 200; panics with its stderr if
    /// it exits or is not ready within the timeout.
    pub async fn start(self) -> Gateway {
        let timeout = self.ready_timeout.unwrap_or(READY_TIMEOUT);
        let gateway = match self.spawn().await {
            Ok(gateway) => gateway,
            Err(failure) => panic!("fhirwall did not start: {failure}"),
        };
        if let Err(failure) = gateway.wait_ready(timeout).await {
            panic!("fhirwall did not become ready within {timeout:?}: {failure}");
        }
        gateway
    }

    /// Starts the gateway and waits only until its admin listener answers `/healthz` (so a
    /// gateway that is alive but not ready can be tested). Fails if the process exits first
    /// or does not answer within the ready timeout.
    pub async fn spawn(self) -> Result<Gateway, StartFailure> {
        let timeout = self.ready_timeout.unwrap_or(READY_TIMEOUT);
        // Free ports are picked by binding :0 and letting go, so another process can take one
        // in between; a start that fails on "address in use" is retried with new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let gateway = self.spawn_once();
            match gateway.wait_alive(timeout).await {
                Ok(()) => return Ok(gateway),
                Err(failure) if attempt < 3 && failure.stderr.to_lowercase().contains("in use") => {
                    gateway.kill();
                    continue;
                }
                Err(failure) => {
                    gateway.kill();
                    return Err(failure);
                }
            }
        }
    }

    fn spawn_once(&self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let [addr, admin_addr] = free_ports();
        let config_path = self.write_config(dir.path(), addr, admin_addr);
        let config = std::fs::read_to_string(&config_path).expect("read config back");
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn fhirwall");
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        Gateway {
            child: Mutex::new(child),
            dir,
            addr,
            admin_addr,
            config,
            stdout,
            stderr,
        }
    }
}

// === impl Gateway ===

impl Gateway {
    /// A builder with [`SAMPLE_POLICY`] and no upstream or issuer yet.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// `http://127.0.0.1:PORT{path}` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// The proxy listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The gateway's folder (config, policy, audit file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file given to the gateway.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// The config text given to the gateway.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The audit file.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join(AUDIT_FILE)
    }

    /// Every complete audit line so far, parsed. Panics on a line that is not JSON: a
    /// corrupt audit trail is a test failure.
    pub fn audit_lines(&self) -> Vec<Value> {
        let text = match std::fs::read_to_string(self.audit_path()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("read audit file: {e}"),
        };
        // A line still being written has no newline yet; it is not a record yet.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits until the audit file has at least `n` lines (writes are asynchronous), up to
    /// 10 s, then panics showing what it has.
    pub async fn wait_for_audit_lines(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.audit_lines();
            if lines.len() >= n {
                return lines;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "expected {n} audit lines, found {}: {lines:#?}\nstderr:\n{}",
                    lines.len(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let response = super::http_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("metrics body")
    }

    /// The value of one series from `/metrics`; see [`super::metric_value`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        super::metric_value(&self.metrics().await, name, labels)
    }

    /// `GET /readyz`: status and JSON body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = super::http_client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StartFailure> {
        self.wait_for_status("/readyz", timeout).await
    }

    async fn wait_alive(&self, timeout: Duration) -> Result<(), StartFailure> {
        self.wait_for_status("/healthz", timeout).await
    }

    /// Polls `path` on the admin port until it answers 200, the process exits, or `timeout`.
    async fn wait_for_status(&self, path: &str, timeout: Duration) -> Result<(), StartFailure> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.failure(Some(status)));
            }
            if let Ok(response) = client.get(self.admin_url(path)).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.failure(None));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn failure(&self, status: Option<ExitStatus>) -> StartFailure {
        // Give the reader threads a moment to collect the last words of a dead process.
        if status.is_some() {
            std::thread::sleep(Duration::from_millis(50));
        }
        StartFailure {
            status,
            stderr: self.stderr(),
            stdout: self.stdout(),
            config: self.config.clone(),
        }
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock()).into_owned()
    }

    /// Everything the gateway wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock()).into_owned()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().id()
    }

    /// The exit status if the process has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().try_wait().ok().flatten()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.lock().id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Asks for a graceful shutdown (SIGTERM).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- fhirwall config ---\n{}\n--- fhirwall stderr ---\n{}",
                self.config,
                self.stderr()
            );
        }
    }
}

// === impl StartFailure ===

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "process exited ({status})")?,
            None => write!(f, "timed out")?,
        }
        write!(
            f,
            "\n--- config ---\n{}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.config, self.stderr, self.stdout
        )
    }
}

// === helpers ===

/// Runs `fhirwall ARGS` to completion: (exit code, stdout, stderr). A death by signal is
/// code -1.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_in(Path::new("."), args)
}

/// Like [`run_cli`], with `dir` as the working directory.
pub fn run_cli_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run fhirwall");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Ports handed to gateways come from below the kernel's ephemeral range (32768-60999 on
/// Linux), one after the other from a process-wide counter: the in-process servers and every
/// outgoing connection get ephemeral ports, so they never take a gateway's port, and two
/// tests of one binary never get the same one. (Picking with `bind(":0")` and releasing let
/// a parallel test pick the same port before the gateway bound it: its requests then reached
/// the other test's gateway.) The start depends on the process id, to spread the processes
/// that may run side by side.
const PORT_RANGE: std::ops::Range<u32> = 20_000..32_000;

fn next_free_listener() -> TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = PORT_RANGE.start + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
}

/// A loopback address with a port no other test of this process was given, free a moment
/// ago.
pub fn free_port() -> SocketAddr {
    next_free_listener().local_addr().expect("local addr")
}

/// `N` distinct loopback addresses from [`free_port`]'s allocator; every listener is held
/// until all are picked.
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| next_free_listener()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr"))
}

/// Reads a child pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
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

/// Deep merge; `null` in `patch` deletes the key.
fn merge(base: &mut Yaml, patch: &Yaml) {
    match (base, patch) {
        (Yaml::Mapping(base), Yaml::Mapping(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(existing) = base.get_mut(key) {
                    merge(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

fn parse_yaml(text: &str) -> Yaml {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("test YAML {text:?}: {e}"))
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}
