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
    /// Addresses the proxy listens on for clients.
    pub listen: Vec<SocketAddr>,
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
    /// Audit trail.
    pub audit: AuditConfig,
    /// How `X-Forwarded-*` and `X-Request-Id` are handled.
    pub forwarding: ForwardingConfig,
    /// Operational log settings.
    pub log: LogConfig,
    /// Rate-limit state: local, or shared through Redis (the quotas are in the policy).
    pub rate_limit: RateLimitConfig,
    /// Path of the policy file (resolved).
    pub policy_path: PathBuf,
    /// The compiled policy.
    pub policy: Arc<Policy>,
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
}

/// Request-header handling toward the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingConfig {
    /// Keep an incoming `X-Forwarded-For` and append the client address (true) or replace it
    /// (false, default: the gateway is the edge).
    pub trust_forwarded_for: bool,
}

/// Operational log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `fhirwall=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub json: bool,
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
