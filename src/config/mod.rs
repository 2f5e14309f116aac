//! Gateway configuration: the YAML file an operator writes, validated and compiled once.
//!
//! [`Config::load`] reads the file, resolves relative paths against the file's folder, loads
//! the policy it names, and returns either a ready [`Config`] or every problem found as
//! [`Diagnostics`] (`file:line:col: message`). Nothing outside this module sees the serde
//! mirror of the file; the rest of the gateway only sees these validated types.

mod diagnostic;
mod file;
pub(crate) mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policy;

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages and reload).
    pub source: PathBuf,
    /// Addresses the proxy listens on for clients (the addresses of `listeners`, in order).
    pub listen: Vec<SocketAddr>,
    /// The proxy listeners: address, and TLS unless explicitly plaintext.
    pub listeners: Vec<ListenerConfig>,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Where allowed requests go.
    pub upstream: UpstreamConfig,
    /// Trusted token issuers; a token from any other issuer is refused.
    pub issuers: Vec<IssuerConfig>,
    /// Verified-token cache.
    pub token_cache: TokenCacheConfig,
    /// Token revocation in the gateway (admin endpoint, revocation list, propagation).
    pub revocation: RevocationConfig,
    /// Audit trail.
    pub audit: AuditConfig,
    /// How `X-Forwarded-*` and `X-Request-Id` are handled.
    pub forwarding: ForwardingConfig,
    /// CORS for browser apps (`cors:`); `None`: fhirwall adds no CORS fields and answers no
    /// preflight (an `OPTIONS` request is decided like any other).
    pub cors: Option<CorsConfig>,
    /// Operational log settings.
    pub log: LogConfig,
    /// Rate-limit state: local, or shared through Redis (the quotas are in the policy).
    pub rate_limit: RateLimitConfig,
    /// Path of the policy file (resolved).
    pub policy_path: PathBuf,
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// Path of the shadow policy (resolved), when one is configured.
    pub shadow_policy_path: Option<PathBuf>,
    /// A candidate policy evaluated beside the active one on live traffic; its decisions
    /// are only compared and counted, never enforced.
    pub shadow_policy: Option<Arc<Policy>>,
    /// Hot reload of this file and the policies it names.
    pub reload: ReloadConfig,
    /// How long in-flight requests may take to finish after SIGTERM (whole seconds).
    pub shutdown_grace: Duration,
    /// Unix socket through which listeners are handed to a new process on upgrade
    /// (`serve --upgrade`, then SIGQUIT to the old one); `None`: a per-process path, so no
    /// upgrade is possible.
    pub upgrade_sock: Option<PathBuf>,
}

/// Hot reload: besides SIGHUP, the configuration file and the policy files are polled
/// for content changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Poll the files and reload when their content changes (default true).
    pub watch: bool,
    /// How often the files are polled (default 2 s).
    pub interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: Duration::from_secs(2),
        }
    }
}

/// The FHIR (or legacy) backend requests are forwarded to.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `http` or `https`.
    pub tls: bool,
    /// Host name or address, as written in the URL.
    pub host: String,
    /// Port (default 80/443 by scheme).
    pub port: u16,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed between reads from the upstream.
    pub read_timeout: Duration,
    /// Time allowed between writes to the upstream.
    pub write_timeout: Duration,
    /// Time allowed for a whole request, from the first byte sent to the last byte received
    /// of the response header (pingora's total connection + response-header budget).
    pub total_timeout: Duration,
    /// How long an idle keep-alive connection is kept in the pool.
    pub idle_timeout: Duration,
    /// Forward the client's `Authorization` header upstream (default false).
    pub forward_authorization: bool,
    /// Verify the upstream's certificate (https only; default true).
    pub verify_tls: bool,
    /// SNI / certificate name to expect; defaults to `host`.
    pub sni: String,
    /// CA bundle the upstream's certificate must chain to (https only); `None`: the system
    /// roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key presented to the upstream (mTLS, https only).
    pub client_identity: Option<IdentityFiles>,
}

/// One proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// TLS termination; `None`: plain HTTP, which the file must ask for explicitly
    /// (`plaintext: true`) unless the address is a loopback one.
    pub tls: Option<ListenerTlsConfig>,
}

/// TLS termination on one listener (HIPAA 164.312(e)(1) transmission security).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTlsConfig {
    /// The certificate chain and private key served; re-read when the files change.
    pub identity: IdentityFiles,
    /// Client certificates (mTLS), when configured.
    pub client_certs: Option<ClientCertConfig>,
    /// How often the certificate and key files are checked for a change.
    pub reload_interval: Duration,
}

/// A PEM certificate chain (leaf first) and the PEM private key of its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The certificate chain file.
    pub certificate: PathBuf,
    /// The private key file (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// Client certificate verification on a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertConfig {
    /// PEM bundle of the CAs that issue client certificates.
    pub ca: PathBuf,
    /// Whether a client must present one.
    pub mode: ClientCertMode,
}

/// Whether a TLS client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertMode {
    /// A handshake without a valid client certificate fails.
    Required,
    /// A client may present none; one that it presents must be valid.
    Optional,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// Exact `iss` value tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one. Never empty.
    pub audiences: Vec<String>,
    /// JWKS location; when absent, discovered from
    /// `{issuer}/.well-known/openid-configuration` then `oauth-authorization-server`.
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted from this issuer (never `none` or `HS*`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the JWKS is refreshed on schedule.
    pub jwks_refresh_interval: Duration,
    /// Minimum time between two fetches (unknown-`kid` refreshes included).
    pub jwks_min_refresh_interval: Duration,
    /// Timeout of one JWKS or discovery fetch.
    pub fetch_timeout: Duration,
    /// Claim carrying the SMART patient context (default `patient`).
    pub patient_claim: String,
    /// RFC 7662 introspection of opaque tokens from this issuer; `None`: opaque tokens are
    /// refused.
    pub introspection: Option<IntrospectionConfig>,
}

/// RFC 7662 token introspection for one issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionConfig {
    /// The introspection endpoint; when absent, `introspection_endpoint` of the issuer's
    /// discovery document.
    pub endpoint: Option<String>,
    /// The RFC 7009 revocation endpoint for pass-through revocation; when absent,
    /// `revocation_endpoint` of the discovery document (if any).
    pub revocation_endpoint: Option<String>,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// How the gateway authenticates to the endpoint.
    pub auth: ClientAuth,
    /// Timeout of one introspection call (connect to last byte).
    pub timeout: Duration,
    /// Longest time an active result is trusted without asking again (never past `exp`).
    pub cache_max_ttl: Duration,
    /// How long an inactive result is remembered.
    pub negative_ttl: Duration,
    /// With several introspecting issuers: the one opaque tokens are sent to.
    pub default_for_opaque: bool,
    /// Consecutive failures (transport errors, 5xx, bad answers) that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe is let through.
    pub breaker_open_for: Duration,
}

/// Client authentication at the introspection and revocation endpoints (RFC 7662 §2.1 defers
/// to RFC 6749 §2.3 and OpenID Connect Core §9).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret.
    SecretBasic(SecretSource),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    SecretPost(SecretSource),
    /// `private_key_jwt` (RFC 7523 §2.2): a signed client assertion.
    PrivateKeyJwt {
        /// PEM private key (RSA or EC P-256).
        key_file: PathBuf,
        /// Signing algorithm of the assertion.
        alg: jsonwebtoken::Algorithm,
        /// `kid` header of the assertion, when the provider needs it.
        kid: Option<String>,
    },
}

/// Where a secret is read from at startup: never the YAML itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable's value.
    Env(String),
    /// A file's content, surrounding whitespace trimmed.
    File(PathBuf),
}

/// In-gateway token revocation.
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationConfig {
    /// The bearer token of `POST /admin/revoke`; `None`: the endpoint answers 404.
    pub admin_token: Option<SecretSource>,
    /// How long a client, subject or `jti` revocation (and a token revocation whose `exp` is
    /// not known) is kept; set it at least as long as the longest token lifetime.
    pub entry_ttl: Duration,
    /// Bound of the revocation list.
    pub max_entries: u64,
    /// Redis URL for propagating revocations to every instance (pub/sub); `None`: local only.
    pub redis_url: Option<String>,
    /// The pub/sub channel.
    pub redis_channel: String,
}

/// Verified-token cache sizing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenCacheConfig {
    /// Maximum number of cached tokens.
    pub max_entries: u64,
    /// Maximum time a verified token is trusted without re-verification (never past `exp`).
    pub max_ttl: Duration,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// One JSON line per record on standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// Audit trail settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Where records go.
    pub target: AuditTarget,
    /// Records waiting to be written; when full, new requests are refused (503).
    pub queue_capacity: usize,
    /// How long a record may wait in memory before it is flushed.
    pub flush_interval: Duration,
    /// Query parameters whose values may appear in the record; all others are redacted.
    pub allow_query_params: Vec<String>,
    /// When a response may be released relative to its record reaching disk.
    pub durability: AuditDurability,
    /// Rotate the file once it holds at least this many bytes (checked after each write).
    pub rotate_bytes: Option<u64>,
    /// Rotate the file once it has been written to for this long.
    pub rotate_interval: Option<Duration>,
    /// Signed checkpoints of the hash chain, if configured.
    pub checkpoint: Option<AuditCheckpointConfig>,
    /// Also append each record as a FHIR R4 AuditEvent (IHE BALP), one NDJSON line, to this
    /// file, in the same write cycle as the trail; a failure there fails the write.
    pub auditevent_path: Option<PathBuf>,
}

/// When a response may be released relative to its audit record reaching disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditDurability {
    /// Records are written off the request path within `flush_interval`; a crash loses at
    /// most the records of the last `flush_interval` (plus what the OS had not written back).
    #[default]
    Batched,
    /// A response is not released before its record is written and fsynced (group commit).
    Strict,
}

/// Signed checkpoints: every `every_records` records or `interval`, whichever comes first,
/// the writer signs (seq, hash) of the chain head with an Ed25519 key and appends it to
/// `<audit path>.checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpointConfig {
    /// PKCS#8 PEM file holding the Ed25519 private key.
    pub key_file: PathBuf,
    /// Records between two checkpoints.
    pub every_records: u64,
    /// Longest time between two checkpoints while records are written.
    pub interval: Duration,
}

/// Request-header handling toward the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingConfig {
    /// Keep an incoming `X-Forwarded-For` and append the client address (true) or replace it
    /// (false, default: the gateway is the edge).
    pub trust_forwarded_for: bool,
}

/// `cors:`: which browser origins may call the gateway (Fetch Standard, CORS protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Allowed origins (`https://app.example.org`, lower case, no path); `None`: any (`*`).
    pub allowed_origins: Option<Vec<String>>,
    /// Request headers a browser app may send (`Access-Control-Allow-Headers`).
    pub allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    pub max_age: Duration,
}

/// Operational log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `fhirwall=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub json: bool,
}

// === impl RevocationConfig ===

impl Default for RevocationConfig {
    /// No admin endpoint, one-hour entries, 100 000 entries per kind, no Redis.
    fn default() -> Self {
        RevocationConfig {
            admin_token: None,
            entry_ttl: Duration::from_secs(3600),
            max_entries: 100_000,
            redis_url: None,
            redis_channel: "fhirwall:revocations".to_owned(),
        }
    }
}

/// Where rate-limit state lives and how it is reported. The quotas themselves are in the
/// policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Send `RateLimit-Policy` / `RateLimit` on allowed responses too (they are always sent
    /// on 429s).
    pub headers_on_allowed: bool,
    /// Most keys one quota keeps in memory; past it the keys closest to a fresh state are
    /// evicted.
    pub max_keys: usize,
    /// How often keys whose state is back to fresh are dropped.
    pub prune_interval: Duration,
    /// Share the quotas between instances through Redis; `None`: each instance limits alone.
    pub redis: Option<RedisConfig>,
}

/// Shared rate-limit state in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key fhirwall writes.
    pub key_prefix: String,
    /// Longest a rate-limit check waits for Redis before the local limits answer.
    pub timeout: Duration,
    /// Share of each quota one instance admits on its own while Redis is unreachable (0..=1).
    pub local_share: f64,
    /// How often an unreachable Redis is tried again.
    pub retry_interval: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            headers_on_allowed: false,
            max_keys: 1_000_000,
            prune_interval: Duration::from_secs(10),
            redis: None,
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads, validates and compiles the configuration at `path` and the policy it names.
    /// Returns every problem found, not just the first.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        file::load(path)
    }

    /// Like [`Config::load`] but from a string; `path` is used for messages and to resolve
    /// relative paths.
    pub fn from_str_at(src: &str, path: &Path) -> Result<Config, Diagnostics> {
        file::load_str(src, path)
    }

    /// Like [`Config::load`], but returns the warnings (configuration and policy lint)
    /// alongside the configuration instead of logging them; for `fhirwall check`.
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Diagnostics), Diagnostics> {
        file::load_with_warnings(path)
    }

    /// Like [`Config::from_str_at`], returning the warnings instead of logging them.
    pub fn from_str_at_with_warnings(
        src: &str,
        path: &Path,
    ) -> Result<(Config, Diagnostics), Diagnostics> {
        file::load_str_with_warnings(src, path)
    }
}
