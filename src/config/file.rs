//! Reads the configuration file into a validated [`Config`], with every problem reported as a
//! [`Diagnostic`] (file, line, column, key path).
//!
//! The file is read with the marked YAML reader of [`super::yaml`] rather than serde (see
//! there for why): each key is extracted and checked in turn, problems are recorded and the
//! walk continues, so one run of `fhirwall check` lists everything. The policy named by
//! `policy:` is loaded too; its diagnostics are returned together with the configuration's.
//! The format, with every default, is documented in `docs/reference.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::yaml::{self, index, join, MapView, Mark, Node, Reader};
use super::{
    AuditCheckpointConfig, AuditConfig, AuditDurability, AuditTarget, ClientAuth, ClientCertConfig,
    ClientCertMode, Config, CorsConfig, Diagnostic, Diagnostics, ForwardingConfig, IdentityFiles,
    IntrospectionConfig, IssuerConfig, ListenerConfig, ListenerTlsConfig, LogConfig,
    RateLimitConfig, ReloadConfig, RevocationConfig, SecretSource, TokenCacheConfig,
    UpstreamConfig,
};
use crate::policy::Policy;

const TOP_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "realm",
    "threads",
    "policy",
    "upstream",
    "issuers",
    "token_cache",
    "revocation",
    "audit",
    "forwarding",
    "cors",
    "log",
    "rate_limit",
    "shadow_policy",
    "reload",
    "shutdown_grace",
    "upgrade_sock",
];
const RELOAD_KEYS: &[&str] = &["watch", "interval"];
const UPSTREAM_KEYS: &[&str] = &[
    "url",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "total_timeout",
    "idle_timeout",
    "forward_authorization",
    "verify_tls",
    "sni",
    "ca",
    "client_certificate",
    "client_key",
];
const LISTENER_KEYS: &[&str] = &["address", "tls", "plaintext"];
const LISTENER_TLS_KEYS: &[&str] = &[
    "certificate",
    "key",
    "client_ca",
    "client_auth",
    "reload_interval",
];
const ISSUER_KEYS: &[&str] = &[
    "issuer",
    "audiences",
    "jwks_uri",
    "algorithms",
    "leeway",
    "jwks_refresh_interval",
    "jwks_min_refresh_interval",
    "fetch_timeout",
    "patient_claim",
    "introspection",
];
const INTROSPECTION_KEYS: &[&str] = &[
    "endpoint",
    "revocation_endpoint",
    "client_id",
    "auth",
    "client_secret_env",
    "client_secret_file",
    "private_key_file",
    "private_key_alg",
    "private_key_kid",
    "timeout",
    "cache_max_ttl",
    "negative_ttl",
    "default",
    "breaker_failures",
    "breaker_open_for",
];
const REVOCATION_KEYS: &[&str] = &[
    "admin_token_env",
    "admin_token_file",
    "entry_ttl",
    "max_entries",
    "redis_url",
    "redis_channel",
];
/// Longest `cache_max_ttl`: an introspection result is a snapshot; trusting it for longer
/// makes a revocation at the provider invisible for as long.
const MAX_INTROSPECTION_TTL: Duration = Duration::from_secs(300);
const TOKEN_CACHE_KEYS: &[&str] = &["max_entries", "max_ttl"];
const AUDIT_KEYS: &[&str] = &[
    "path",
    "queue_capacity",
    "flush_interval",
    "allow_query_params",
    "durability",
    "rotate_bytes",
    "rotate_interval",
    "checkpoint",
    "auditevent_path",
];
const AUDIT_CHECKPOINT_KEYS: &[&str] = &["key_file", "every_records", "interval"];
const FORWARDING_KEYS: &[&str] = &["trust_forwarded_for"];
const CORS_KEYS: &[&str] = &["allowed_origins", "allowed_headers", "max_age"];
/// Request headers a SMART app sends: the token, FHIR content negotiation and conditional
/// interactions (R4 http.html: `Prefer`, `If-Match`, `If-None-Match`, `If-None-Exist`,
/// `If-Modified-Since`), and the request id. `Authorization` must be named: the Fetch
/// Standard never lets `*` cover it.
const DEFAULT_CORS_HEADERS: [&str; 9] = [
    "Authorization",
    "Content-Type",
    "Accept",
    "Prefer",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "X-Request-Id",
];
/// Longest `cors.max_age` (browsers cap it lower still: Chromium at 2 hours).
const MAX_CORS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const LOG_KEYS: &[&str] = &["level", "format"];

/// Algorithms accepted when an issuer lists none: every asymmetric algorithm.
const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const DEFAULT_ALLOW_QUERY_PARAMS: [&str; 5] =
    ["_count", "_sort", "_summary", "_elements", "_format"];
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// A certificate closer than this to its `notAfter` is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

pub(super) fn load(path: &Path) -> Result<Config, Diagnostics> {
    let (config, warnings) = load_with_warnings(path)?;
    log_warnings(&warnings);
    Ok(config)
}

pub(super) fn load_str(src: &str, path: &Path) -> Result<Config, Diagnostics> {
    let (config, warnings) = load_str_with_warnings(src, path)?;
    log_warnings(&warnings);
    Ok(config)
}

/// [`load`], returning the warnings (configuration and policy lint) instead of logging them.
pub(super) fn load_with_warnings(path: &Path) -> Result<(Config, Diagnostics), Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(src) => load_str_with_warnings(&src, path),
        Err(e) => {
            let mut d = Diagnostics::default();
            d.push(Diagnostic::error(
                path,
                0,
                0,
                "",
                format!("cannot read the configuration file: {e}"),
            ));
            Err(d)
        }
    }
}

/// [`load_str`], returning the warnings instead of logging them.
pub(super) fn load_str_with_warnings(
    src: &str,
    path: &Path,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let root = yaml::parse(src, path)?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut r = Reader::new(path);
    let parts = read(&mut r, &root, &base_dir);
    r.diags.0.sort_by_key(|d| (d.line, d.col));

    // The policy's own diagnostics follow the configuration's.
    let mut all = r.diags;
    let policy = parts.as_ref().and_then(|p| p.policy.as_ref());
    let loaded = policy
        .and_then(|(policy_path, mark, key)| load_policy(policy_path, *mark, key, path, &mut all));
    // The shadow policy is compiled by the same loader: a candidate that would not load as
    // the active policy is refused here too.
    let shadow = parts.as_ref().and_then(|p| p.shadow_policy.as_ref());
    let shadow_loaded =
        shadow.map(|(shadow_path, mark, key)| load_policy(shadow_path, *mark, key, path, &mut all));
    if all.has_errors() {
        return Err(all);
    }
    let (Some(parts), Some(policy)) = (parts, loaded) else {
        // Unreachable: every `None` above came with an error.
        return Err(all);
    };
    let shadow = match shadow_loaded {
        None => None,
        Some(Some(p)) => Some(p),
        // Unreachable: a shadow policy that did not load came with an error.
        Some(None) => return Err(all),
    };
    let warnings = Diagnostics(
        all.0
            .into_iter()
            .chain(policy.warnings().0.iter().cloned())
            .chain(shadow.iter().flat_map(|s| s.warnings().0.iter().cloned()))
            .collect(),
    );
    Ok((parts.into_config(path, policy, shadow), warnings))
}

fn log_warnings(warnings: &Diagnostics) {
    for w in &warnings.0 {
        tracing::warn!(file = %w.file.display(), line = w.line, col = w.col, key = %w.key, "{}", w.message);
    }
}

/// Reads the policy file named at `mark`; an unreadable file is an error there.
fn load_policy(
    policy_path: &Path,
    mark: Mark,
    key: &str,
    config_path: &Path,
    diags: &mut Diagnostics,
) -> Option<Arc<Policy>> {
    let src = match std::fs::read_to_string(policy_path) {
        Ok(src) => src,
        Err(e) => {
            diags.push(Diagnostic::error(
                config_path,
                mark.line,
                mark.col,
                key,
                format!(
                    "cannot read the policy file `{}`: {e}",
                    policy_path.display()
                ),
            ));
            return None;
        }
    };
    match Policy::parse(&src, policy_path) {
        Ok(p) => Some(Arc::new(p)),
        Err(d) => {
            diags.extend(d);
            None
        }
    }
}

/// Everything but the policy, validated.
struct Parts {
    listeners: Vec<ListenerConfig>,
    admin_listen: SocketAddr,
    realm: String,
    threads: usize,
    /// Resolved path, where it is written, and its key.
    policy: Option<(PathBuf, Mark, String)>,
    upstream: UpstreamConfig,
    issuers: Vec<IssuerConfig>,
    token_cache: TokenCacheConfig,
    revocation: RevocationConfig,
    audit: AuditConfig,
    forwarding: ForwardingConfig,
    cors: Option<CorsConfig>,
    log: LogConfig,
    rate_limit: RateLimitConfig,
    /// Resolved path of the shadow policy, where it is written, and its key.
    shadow_policy: Option<(PathBuf, Mark, String)>,
    reload: ReloadConfig,
    shutdown_grace: Duration,
    upgrade_sock: Option<PathBuf>,
}

impl Parts {
    fn into_config(
        self,
        source: &Path,
        policy: Arc<Policy>,
        shadow_policy: Option<Arc<Policy>>,
    ) -> Config {
        let Parts {
            listeners,
            admin_listen,
            realm,
            threads,
            policy: policy_path,
            upstream,
            issuers,
            token_cache,
            revocation,
            audit,
            forwarding,
            cors,
            log,
            rate_limit,
            shadow_policy: shadow_policy_path,
            reload,
            shutdown_grace,
            upgrade_sock,
        } = self;
        Config {
            source: source.to_path_buf(),
            listen: listeners.iter().map(|l| l.addr).collect(),
            listeners,
            admin_listen,
            realm,
            threads,
            upstream,
            issuers,
            token_cache,
            revocation,
            audit,
            forwarding,
            cors,
            log,
            rate_limit,
            policy_path: policy_path.map(|(p, _, _)| p).unwrap_or_default(),
            policy,
            shadow_policy_path: shadow_policy_path.map(|(p, _, _)| p),
            shadow_policy,
            reload,
            shutdown_grace,
            upgrade_sock,
        }
    }
}

/// Reads the whole file. Returns `None` when a part is missing (an error was recorded); the
/// `policy` entry is `None` when the key itself is bad.
fn read(r: &mut Reader<'_>, root: &Node, base_dir: &Path) -> Option<Parts> {
    let top = r.map(root, "", TOP_KEYS)?;

    let listen = r
        .required(&top, "", "listen")
        .and_then(|n| listen(r, n, base_dir));
    let admin_listen = r
        .required(&top, "", "admin_listen")
        .and_then(|n| socket_addr(r, n, "admin_listen"));
    if let (Some(l), Some(a), Some(n)) = (&listen, admin_listen, top.get("admin_listen")) {
        if l.iter().any(|l| l.addr == a) {
            r.error(
                n.mark,
                "admin_listen",
                format!("`{a}` is also a proxy `listen` address"),
            );
        }
    }

    let realm = match top.get("realm") {
        None => Some("fhirwall".to_owned()),
        Some(n) => realm(r, n),
    };

    let threads = match top.get("threads") {
        None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(n) => r.u64(n, "threads").and_then(|t| {
            if (1..=1024).contains(&t) {
                Some(t as usize)
            } else {
                r.error(n.mark, "threads", "`threads` must be between 1 and 1024");
                None
            }
        }),
    };

    let policy = r.required(&top, "", "policy").and_then(|n| {
        let s = r.string(n, "policy")?;
        if s.is_empty() {
            r.error(n.mark, "policy", "the policy path is empty");
            return None;
        }
        Some((base_dir.join(s), n.mark, "policy".to_owned()))
    });

    let upstream = r
        .required(&top, "", "upstream")
        .and_then(|n| upstream(r, n, base_dir));
    let issuers = r
        .required(&top, "", "issuers")
        .and_then(|n| issuers(r, n, base_dir));

    let token_cache = section(r, &top, "token_cache", TOKEN_CACHE_KEYS, |r, m| {
        let max_entries = opt(r, m, "token_cache", "max_entries", 100_000, |r, n, k| {
            positive(r, n, k, r_u64)
        });
        let max_ttl = opt(
            r,
            m,
            "token_cache",
            "max_ttl",
            Duration::from_secs(300),
            |r, n, k| positive(r, n, k, r_duration),
        );
        Some(TokenCacheConfig {
            max_entries: max_entries?,
            max_ttl: max_ttl?,
        })
    });

    let revocation = section(r, &top, "revocation", REVOCATION_KEYS, |r, m| {
        revocation(r, m, base_dir)
    });

    let audit = section(r, &top, "audit", AUDIT_KEYS, |r, m| {
        let target = opt(r, m, "audit", "path", AuditTarget::Stdout, |r, n, k| {
            let s = r.string(n, k)?;
            match s {
                "" => {
                    r.error(
                        n.mark,
                        k,
                        "the audit path is empty (use `stdout` or a file path)",
                    );
                    None
                }
                "stdout" => Some(AuditTarget::Stdout),
                file => Some(AuditTarget::File(base_dir.join(file))),
            }
        });
        let queue_capacity = opt(r, m, "audit", "queue_capacity", 65_536, |r, n, k| {
            positive(r, n, k, r_u64).map(|v| v as usize)
        });
        let flush_interval = opt(
            r,
            m,
            "audit",
            "flush_interval",
            Duration::from_millis(100),
            |r, n, k| positive(r, n, k, r_duration),
        );
        let default_params = || DEFAULT_ALLOW_QUERY_PARAMS.map(str::to_owned).to_vec();
        let allow_query_params = opt(
            r,
            m,
            "audit",
            "allow_query_params",
            default_params(),
            |r, n, k| {
                let items = r.strings(n, k)?;
                Some(items.into_iter().map(|(s, _)| s.to_owned()).collect())
            },
        );
        let durability = opt(
            r,
            m,
            "audit",
            "durability",
            AuditDurability::Batched,
            |r, n, k| match r.string(n, k)? {
                "batched" => Some(AuditDurability::Batched),
                "strict" => Some(AuditDurability::Strict),
                other => {
                    r.error(
                        n.mark,
                        k,
                        format!("unknown durability `{other}` (expected `batched` or `strict`)"),
                    );
                    None
                }
            },
        );
        let rotate_bytes = opt(r, m, "audit", "rotate_bytes", None, |r, n, k| {
            positive(r, n, k, r_u64).map(Some)
        });
        let rotate_interval = opt(r, m, "audit", "rotate_interval", None, |r, n, k| {
            positive(r, n, k, r_duration).map(Some)
        });
        let auditevent_path = opt(r, m, "audit", "auditevent_path", None, |r, n, k| {
            match r.string(n, k)? {
                "" => {
                    r.error(
                        n.mark,
                        k,
                        "the AuditEvent path is empty (omit the key to turn the sink off)",
                    );
                    None
                }
                file => Some(Some(base_dir.join(file))),
            }
        });
        let checkpoint = match m.get("checkpoint") {
            None => Some(None),
            Some(n) => audit_checkpoint(r, n, base_dir).map(Some),
        };
        let target = target?;
        if target == AuditTarget::Stdout {
            for key in ["rotate_bytes", "rotate_interval", "checkpoint"] {
                if let Some(n) = m.get(key) {
                    r.error(
                        n.mark,
                        &join("audit", key),
                        format!("`{key}` needs a file `audit.path`, not stdout"),
                    );
                }
            }
        }
        Some(AuditConfig {
            target,
            queue_capacity: queue_capacity?,
            flush_interval: flush_interval?,
            allow_query_params: allow_query_params?,
            durability: durability?,
            rotate_bytes: rotate_bytes?,
            rotate_interval: rotate_interval?,
            checkpoint: checkpoint?,
            auditevent_path: auditevent_path?,
        })
    });

    let forwarding = section(r, &top, "forwarding", FORWARDING_KEYS, |r, m| {
        let trust = opt(
            r,
            m,
            "forwarding",
            "trust_forwarded_for",
            false,
            |r, n, k| r.bool(n, k),
        );
        Some(ForwardingConfig {
            trust_forwarded_for: trust?,
        })
    });

    let cors = match top.get("cors") {
        None => Some(None),
        Some(_) => section(r, &top, "cors", CORS_KEYS, cors).map(Some),
    };

    let log = section(r, &top, "log", LOG_KEYS, |r, m| {
        let level = opt(r, m, "log", "level", "info".to_owned(), |r, n, k| {
            let s = r.string(n, k)?;
            match tracing_subscriber::EnvFilter::try_new(s) {
                Ok(_) if !s.is_empty() => Some(s.to_owned()),
                Ok(_) => {
                    r.error(n.mark, k, "the log level is empty");
                    None
                }
                Err(e) => {
                    r.error(n.mark, k, format!("invalid log filter `{s}`: {e}"));
                    None
                }
            }
        });
        let json = opt(r, m, "log", "format", false, |r, n, k| {
            match r.string(n, k)? {
                "text" => Some(false),
                "json" => Some(true),
                other => {
                    r.error(
                        n.mark,
                        k,
                        format!("unknown log format `{other}`; expected `text` or `json`"),
                    );
                    None
                }
            }
        });
        Some(LogConfig {
            level: level?,
            json: json?,
        })
    });

    let rate_limit = crate::ratelimit::spec::read_config(r, top.get("rate_limit"));

    let shadow_policy = match top.get("shadow_policy") {
        None => Some(None),
        Some(n) => r.string(n, "shadow_policy").and_then(|s| {
            if s.is_empty() {
                r.error(
                    n.mark,
                    "shadow_policy",
                    "the shadow policy path is empty (omit the key to evaluate no shadow policy)",
                );
                return None;
            }
            Some(Some((base_dir.join(s), n.mark, "shadow_policy".to_owned())))
        }),
    };

    let reload = section(r, &top, "reload", RELOAD_KEYS, |r, m| {
        let watch = opt(r, m, "reload", "watch", true, |r, n, k| r.bool(n, k));
        let interval = opt(
            r,
            m,
            "reload",
            "interval",
            Duration::from_secs(2),
            |r, n, k| positive(r, n, k, r_duration),
        );
        Some(ReloadConfig {
            watch: watch?,
            interval: interval?,
        })
    });

    let shutdown_grace = match top.get("shutdown_grace") {
        None => Some(Duration::from_secs(10)),
        Some(n) => r.duration(n, "shutdown_grace").and_then(|d| {
            // pingora counts the grace period in whole seconds.
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                r.error(
                    n.mark,
                    "shutdown_grace",
                    "`shutdown_grace` must be between 1s and 1h",
                );
                return None;
            }
            Some(d)
        }),
    };

    let upgrade_sock = match top.get("upgrade_sock") {
        None => Some(None),
        Some(n) => r.string(n, "upgrade_sock").and_then(|s| {
            if s.is_empty() {
                r.error(n.mark, "upgrade_sock", "the upgrade socket path is empty");
                return None;
            }
            Some(Some(base_dir.join(s)))
        }),
    };

    Some(Parts {
        listeners: listen?,
        admin_listen: admin_listen?,
        realm: realm?,
        threads: threads?,
        policy,
        upstream: upstream?,
        issuers: issuers?,
        token_cache: token_cache?,
        revocation: revocation?,
        audit: audit?,
        forwarding: forwarding?,
        cors: cors?,
        log: log?,
        rate_limit: rate_limit?,
        shadow_policy: shadow_policy?,
        reload: reload?,
        shutdown_grace: shutdown_grace?,
        upgrade_sock: upgrade_sock?,
    })
}

/// An optional section: its defaults when absent.
/// `cors:`. `allowed_origins` is required: `["*"]` (any origin) or a list of exact origins
/// (`scheme://host[:port]`, as a browser sends `Origin`: lower case, no path).
fn cors(r: &mut Reader<'_>, m: &MapView<'_>) -> Option<CorsConfig> {
    let allowed_origins = match m.get("allowed_origins") {
        None => {
            r.error(
                m.mark,
                "cors.allowed_origins",
                "missing: list the origins browser apps are served from, or `[\"*\"]` for any",
            );
            None
        }
        Some(n) => {
            let items = r.strings(n, "cors.allowed_origins")?;
            let mut ok = true;
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            let any = items.iter().any(|(s, _)| *s == "*");
            if any && items.len() > 1 {
                r.error(
                    n.mark,
                    "cors.allowed_origins",
                    "`*` allows every origin: list it alone",
                );
                ok = false;
            }
            if items.is_empty() {
                r.error(
                    n.mark,
                    "cors.allowed_origins",
                    "empty: list at least one origin (or remove `cors`)",
                );
                ok = false;
            }
            for (i, (origin, item)) in items.iter().enumerate() {
                if *origin == "*" {
                    continue;
                }
                if let Err(why) = check_origin(origin) {
                    r.error(item.mark, &index("cors.allowed_origins", i), why);
                    ok = false;
                } else if out.iter().any(|o| o == origin) {
                    r.error(
                        item.mark,
                        &index("cors.allowed_origins", i),
                        format!("origin `{origin}` is listed twice"),
                    );
                    ok = false;
                } else {
                    out.push((*origin).to_owned());
                }
            }
            ok.then_some(if any { None } else { Some(out) })
        }
    };
    let allowed_headers = opt(
        r,
        m,
        "cors",
        "allowed_headers",
        DEFAULT_CORS_HEADERS.map(str::to_owned).to_vec(),
        |r, n, k| {
            let items = r.strings(n, k)?;
            let mut ok = true;
            for (i, (h, item)) in items.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() || *h == "*" {
                    r.error(
                        item.mark,
                        &index(k, i),
                        format!("`{h}` is not a header name"),
                    );
                    ok = false;
                }
            }
            ok.then(|| items.into_iter().map(|(s, _)| s.to_owned()).collect())
        },
    );
    let max_age = opt(
        r,
        m,
        "cors",
        "max_age",
        Duration::from_secs(600),
        |r, n, k| {
            let d = r_duration(r, n, k)?;
            if d > MAX_CORS_MAX_AGE {
                r.error(n.mark, k, "`cors.max_age` must be at most 24h");
                return None;
            }
            Some(d)
        },
    );
    Some(CorsConfig {
        allowed_origins: allowed_origins?,
        allowed_headers: allowed_headers?,
        max_age: max_age?,
    })
}

/// An origin as browsers serialize it (RFC 6454 §6.2): `http`/`https`, lower-case host,
/// optional port, nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("`{origin}` is not an origin: expected `https://host[:port]`"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    if !host_ok || !port_ok {
        return Err(format!(
            "`{origin}` is not an origin as a browser sends it: lower-case host, optional port, no path or trailing `/`"
        ));
    }
    Ok(())
}

fn section<T>(
    r: &mut Reader<'_>,
    top: &MapView<'_>,
    key: &str,
    allowed: &[&str],
    f: impl FnOnce(&mut Reader<'_>, &MapView<'_>) -> Option<T>,
) -> Option<T> {
    static EMPTY: Node = Node {
        kind: yaml::Kind::Map(Vec::new()),
        mark: Mark { line: 0, col: 0 },
    };
    let node = top.get(key).unwrap_or(&EMPTY);
    let m = r.map(node, key, allowed)?;
    f(r, &m)
}

/// An optional key of section `section`: `default` when absent, else `read`.
fn opt<T>(
    r: &mut Reader<'_>,
    m: &MapView<'_>,
    section: &str,
    key: &str,
    default: T,
    read: impl FnOnce(&mut Reader<'_>, &Node, &str) -> Option<T>,
) -> Option<T> {
    match m.get(key) {
        None => Some(default),
        Some(n) => read(r, n, &join(section, key)),
    }
}

/// `audit.checkpoint`: the key is read and parsed here so that `fhirwall check` reports a
/// bad key at its position rather than at startup.
fn audit_checkpoint(
    r: &mut Reader<'_>,
    n: &Node,
    base_dir: &Path,
) -> Option<AuditCheckpointConfig> {
    let key = "audit.checkpoint";
    let m = r.map(n, key, AUDIT_CHECKPOINT_KEYS)?;
    let key_file = r.required(&m, key, "key_file").and_then(|n| {
        let k = join(key, "key_file");
        let path = base_dir.join(r.string(n, &k)?);
        match crate::audit::load_signing_key(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                r.error(n.mark, &k, e.to_string());
                None
            }
        }
    });
    let every_records = opt(r, &m, key, "every_records", 10_000, |r, n, k| {
        positive(r, n, k, r_u64)
    });
    let interval = opt(
        r,
        &m,
        key,
        "interval",
        Duration::from_secs(60),
        |r, n, k| positive(r, n, k, r_duration),
    );
    Some(AuditCheckpointConfig {
        key_file: key_file?,
        every_records: every_records?,
        interval: interval?,
    })
}

fn r_u64(r: &mut Reader<'_>, n: &Node, k: &str) -> Option<u64> {
    r.u64(n, k)
}

fn r_duration(r: &mut Reader<'_>, n: &Node, k: &str) -> Option<Duration> {
    r.duration(n, k)
}

/// A value that must not be zero.
fn positive<T: Default + PartialEq>(
    r: &mut Reader<'_>,
    n: &Node,
    k: &str,
    read: fn(&mut Reader<'_>, &Node, &str) -> Option<T>,
) -> Option<T> {
    let v = read(r, n, k)?;
    if v == T::default() {
        r.error(
            n.mark,
            k,
            format!("`{}` must be greater than zero", last_key(k)),
        );
        return None;
    }
    Some(v)
}

fn last_key(k: &str) -> &str {
    k.rsplit('.').next().unwrap_or(k)
}

/// `listen`: one address, or a list whose items are addresses or listener mappings
/// (`address`, `tls`, `plaintext`).
fn listen(r: &mut Reader<'_>, n: &Node, base_dir: &Path) -> Option<Vec<ListenerConfig>> {
    let items: Vec<(Option<(ListenerConfig, Mark)>, String)> = match &n.kind {
        yaml::Kind::Seq(items) => {
            if items.is_empty() {
                r.error(n.mark, "listen", "list at least one address");
                return None;
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = index("listen", i);
                    (listener(r, item, &key, base_dir), key)
                })
                .collect()
        }
        _ => vec![(listener(r, n, "listen", base_dir), "listen".to_owned())],
    };
    let mut out: Vec<ListenerConfig> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (item, key) in items {
        match item {
            Some((l, mark)) if out.iter().any(|o| o.addr == l.addr) => {
                r.error(mark, &key, format!("`{}` is listed twice", l.addr));
                ok = false;
            }
            Some((l, _)) => out.push(l),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// One listener: a bare address, or a mapping. Plain HTTP must be asked for with
/// `plaintext: true`, except on a loopback address (the connection never leaves the host).
/// HIPAA 164.312(e)(1): PHI and bearer tokens cross the network only encrypted.
fn listener(
    r: &mut Reader<'_>,
    n: &Node,
    key: &str,
    base_dir: &Path,
) -> Option<(ListenerConfig, Mark)> {
    if !matches!(n.kind, yaml::Kind::Map(_)) {
        let addr = socket_addr(r, n, key)?;
        if !addr.ip().is_loopback() {
            r.error(n.mark, key, plaintext_refused(addr));
            return None;
        }
        return Some((ListenerConfig { addr, tls: None }, n.mark));
    }
    let m = r.map(n, key, LISTENER_KEYS)?;
    let addr_node = r.required(&m, key, "address");
    let addr = addr_node.and_then(|a| socket_addr(r, a, &join(key, "address")));
    let plaintext = opt(r, &m, key, "plaintext", false, |r, n, k| r.bool(n, k));
    let tls = match m.get("tls") {
        None => Some(None),
        Some(t) => listener_tls(r, t, &join(key, "tls"), base_dir).map(Some),
    };
    if plaintext == Some(true) && m.get("tls").is_some() {
        let mark = m.get("plaintext").map_or(m.mark, |n| n.mark);
        r.error(
            mark,
            &join(key, "plaintext"),
            "`plaintext: true` contradicts `tls`; keep one",
        );
        return None;
    }
    let (addr, addr_node, plaintext, tls) = (addr?, addr_node?, plaintext?, tls?);
    match (&tls, plaintext) {
        (None, false) if !addr.ip().is_loopback() => {
            r.error(
                addr_node.mark,
                &join(key, "address"),
                plaintext_refused(addr),
            );
            return None;
        }
        (None, true) if !addr.ip().is_loopback() => {
            let mark = m.get("plaintext").map_or(m.mark, |n| n.mark);
            r.warning(
                mark,
                &join(key, "plaintext"),
                format!("`{addr}` serves clients in plain HTTP: only behind a TLS-terminating proxy on a trusted network"),
            );
        }
        _ => {}
    }
    Some((ListenerConfig { addr, tls }, addr_node.mark))
}

fn plaintext_refused(addr: SocketAddr) -> String {
    format!("`{addr}` is not a loopback address and has no `tls`: clients would send tokens and PHI in plain HTTP; add `tls` (certificate and key), or, behind a TLS-terminating proxy on a trusted network, write `{{ address: \"{addr}\", plaintext: true }}`")
}

/// A listener's `tls:` block; the files are loaded now, so `fhirwall check` reports a bad
/// certificate or key at its key.
fn listener_tls(
    r: &mut Reader<'_>,
    n: &Node,
    key: &str,
    base_dir: &Path,
) -> Option<ListenerTlsConfig> {
    let m = r.map(n, key, LISTENER_TLS_KEYS)?;
    let cert_node = r.required(&m, key, "certificate");
    let key_node = r.required(&m, key, "key");
    let identity = identity_files(
        r,
        cert_node,
        key_node,
        (&join(key, "certificate"), &join(key, "key")),
        base_dir,
    );
    let client_ca = match m.get("client_ca") {
        None => Some(None),
        Some(n) => ca_file(r, n, &join(key, "client_ca"), base_dir).map(Some),
    };
    let mode = opt(r, &m, key, "client_auth", None, |r, n, k| {
        match r.string(n, k)? {
            "required" => Some(Some(ClientCertMode::Required)),
            "optional" => Some(Some(ClientCertMode::Optional)),
            other => {
                r.error(
                    n.mark,
                    k,
                    format!("unknown client_auth `{other}`; expected `required` or `optional`"),
                );
                None
            }
        }
    });
    let reload_interval = opt(
        r,
        &m,
        key,
        "reload_interval",
        Duration::from_secs(5),
        |r, n, k| positive(r, n, k, r_duration),
    );
    let (client_ca, mode) = (client_ca?, mode?);
    let client_certs = match (client_ca, mode) {
        (Some(ca), mode) => Some(ClientCertConfig {
            ca,
            // Fail closed: a CA given without a mode means certificates are required.
            mode: mode.unwrap_or(ClientCertMode::Required),
        }),
        (None, None) => None,
        (None, Some(_)) => {
            let mark = m.get("client_auth").map_or(m.mark, |n| n.mark);
            r.error(
                mark,
                &join(key, "client_auth"),
                "`client_auth` needs `client_ca` (the CAs that issue client certificates)",
            );
            return None;
        }
    };
    Some(ListenerTlsConfig {
        identity: identity?,
        client_certs,
        reload_interval: reload_interval?,
    })
}

/// A certificate chain and key file pair, loaded and checked to belong together: a problem
/// with the certificate file is reported at `keys.0`, with the key (or the pair) at `keys.1`.
fn identity_files(
    r: &mut Reader<'_>,
    cert: Option<&Node>,
    key: Option<&Node>,
    keys: (&str, &str),
    base_dir: &Path,
) -> Option<IdentityFiles> {
    let cert = cert.and_then(|n| Some((non_empty_path(r, n, keys.0, base_dir)?, n.mark)));
    let key = key.and_then(|n| Some((non_empty_path(r, n, keys.1, base_dir)?, n.mark)));
    let ((cert_path, cert_mark), (key_path, key_mark)) = (cert?, key?);
    let chain = crate::tls::load_certificates(&cert_path)
        .map_err(|e| r.error(cert_mark, keys.0, e.to_string()))
        .ok();
    let private = crate::tls::load_private_key(&key_path)
        .map_err(|e| r.error(key_mark, keys.1, e.to_string()))
        .ok();
    let files = IdentityFiles {
        certificate: cert_path,
        key: key_path,
    };
    let (chain, private) = (chain?, private?);
    match crate::tls::Identity::new(chain, private, &files)
        .and_then(|id| id.key_der_for_pingora(&files).map(|_| id))
    {
        Ok(id) => {
            let left = id.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
            if left < EXPIRY_WARNING.as_secs() as i64 {
                r.warning(
                    cert_mark,
                    keys.0,
                    format!(
                        "the certificate expires in {} days ({}); renew it",
                        left / 86_400,
                        crate::tls::rfc3339(id.not_after)
                    ),
                );
            }
            Some(files)
        }
        Err(e @ crate::tls::TlsFileError::Expired { .. }) => {
            r.error(cert_mark, keys.0, e.to_string());
            None
        }
        Err(e) => {
            r.error(key_mark, keys.1, e.to_string());
            None
        }
    }
}

/// A PEM CA bundle, loaded now.
fn ca_file(r: &mut Reader<'_>, n: &Node, key: &str, base_dir: &Path) -> Option<PathBuf> {
    let path = non_empty_path(r, n, key, base_dir)?;
    match crate::tls::load_roots(&path) {
        Ok(_) => Some(path),
        Err(e) => {
            r.error(n.mark, key, e.to_string());
            None
        }
    }
}

fn non_empty_path(r: &mut Reader<'_>, n: &Node, key: &str, base_dir: &Path) -> Option<PathBuf> {
    let s = r.string(n, key)?;
    if s.is_empty() {
        r.error(
            n.mark,
            key,
            format!("the `{}` path is empty", last_key(key)),
        );
        return None;
    }
    Some(base_dir.join(s))
}

fn socket_addr(r: &mut Reader<'_>, n: &Node, key: &str) -> Option<SocketAddr> {
    let s = r.string(n, key)?;
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.error(
                n.mark,
                key,
                format!("invalid socket address `{s}`; expected an IP address and port, e.g. `127.0.0.1:8080` or `[::1]:8080`"),
            );
            None
        }
    }
}

fn realm(r: &mut Reader<'_>, n: &Node) -> Option<String> {
    let s = r.string(n, "realm")?;
    // It is sent inside a quoted-string of `WWW-Authenticate` (RFC 9110 §11.2).
    if s.is_empty()
        || s.chars()
            .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c))
    {
        r.error(
            n.mark,
            "realm",
            "the realm must be non-empty printable ASCII without `\"` or `\\`",
        );
        return None;
    }
    Some(s.to_owned())
}

fn upstream(r: &mut Reader<'_>, n: &Node, base_dir: &Path) -> Option<UpstreamConfig> {
    const K: &str = "upstream";
    let m = r.map(n, K, UPSTREAM_KEYS)?;
    let url = r
        .required(&m, K, "url")
        .and_then(|n| upstream_url(r, n, "upstream.url"));
    let dur = |r: &mut Reader<'_>, key: &str, default: u64| {
        opt(r, &m, K, key, Duration::from_secs(default), |r, n, k| {
            positive(r, n, k, r_duration)
        })
    };
    let connect_timeout = dur(r, "connect_timeout", 2);
    let read_timeout = dur(r, "read_timeout", 30);
    let write_timeout = dur(r, "write_timeout", 30);
    let total_timeout = dur(r, "total_timeout", 60);
    let idle_timeout = dur(r, "idle_timeout", 60);
    let forward_authorization = opt(r, &m, K, "forward_authorization", false, |r, n, k| {
        r.bool(n, k)
    });
    let verify_tls = opt(r, &m, K, "verify_tls", true, |r, n, k| r.bool(n, k));
    if let (Some(false), Some(n)) = (verify_tls, m.get("verify_tls")) {
        r.warning(
            n.mark,
            "upstream.verify_tls",
            "certificate verification of the upstream is disabled",
        );
    }
    let sni = match m.get("sni") {
        None => None,
        Some(n) => r.string(n, "upstream.sni").and_then(|s| {
            if s.is_empty() {
                r.error(n.mark, "upstream.sni", "the SNI name is empty");
                None
            } else {
                Some(Some(s.to_owned()))
            }
        }),
    }
    .or(Some(None));
    let ca = match m.get("ca") {
        None => Some(None),
        Some(n) => ca_file(r, n, "upstream.ca", base_dir).map(Some),
    };
    let client_identity = match (m.get("client_certificate"), m.get("client_key")) {
        (None, None) => Some(None),
        (Some(c), Some(k)) => identity_files(
            r,
            Some(c),
            Some(k),
            ("upstream.client_certificate", "upstream.client_key"),
            base_dir,
        )
        .map(Some),
        (Some(n), None) => {
            r.error(
                n.mark,
                "upstream.client_certificate",
                "`client_certificate` needs `client_key` (mTLS to the upstream)",
            );
            None
        }
        (None, Some(n)) => {
            r.error(
                n.mark,
                "upstream.client_key",
                "`client_key` needs `client_certificate` (mTLS to the upstream)",
            );
            None
        }
    };
    let (tls, host, port) = url?;
    if !tls {
        // TLS settings on a plain-http upstream would suggest a protection that is not there.
        for k in ["ca", "client_certificate", "client_key"] {
            if let Some(n) = m.get(k) {
                r.error(
                    n.mark,
                    &join(K, k),
                    format!("`{k}` is only used with an `https://` upstream URL"),
                );
            }
        }
        if let Some(n) = m.get("url").filter(|_| !is_loopback(&host)) {
            r.warning(
                n.mark,
                "upstream.url",
                "plain http to another host: requests, PHI and any forwarded credentials cross the network unencrypted; use `https://`",
            );
        }
    }
    let (ca, client_identity) = (ca?, client_identity?);
    let sni = sni?.unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    Some(UpstreamConfig {
        tls,
        host,
        port,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        write_timeout: write_timeout?,
        total_timeout: total_timeout?,
        idle_timeout: idle_timeout?,
        forward_authorization: forward_authorization?,
        verify_tls: verify_tls?,
        sni,
        ca: if tls { ca } else { None },
        client_identity: if tls { client_identity } else { None },
    })
}

/// `http(s)://host[:port][/]`: the request path is forwarded unchanged, so the upstream URL
/// cannot carry one (a FHIR base path belongs in the policy's `base_path`).
fn upstream_url(r: &mut Reader<'_>, n: &Node, key: &str) -> Option<(bool, String, u16)> {
    let s = r.string(n, key)?;
    match parse_http_url(s) {
        Ok(u) if u.rest.is_empty() || u.rest == "/" => Some((u.tls, u.host.to_owned(), u.port)),
        Ok(_) => {
            r.error(
                n.mark,
                key,
                format!("the upstream URL `{s}` has a path, query or fragment; give only `scheme://host[:port]` (requests are forwarded with their own path; put a FHIR base path in the policy's `base_path`)"),
            );
            None
        }
        Err(why) => {
            r.error(n.mark, key, format!("invalid URL `{s}`: {why}"));
            None
        }
    }
}

/// The parts of an `http`/`https` URL fhirwall needs.
struct HttpUrl<'a> {
    tls: bool,
    /// As written (IPv6 in brackets).
    host: &'a str,
    port: u16,
    /// Path, query and fragment.
    rest: &'a str,
}

fn parse_http_url(s: &str) -> Result<HttpUrl<'_>, &'static str> {
    let (tls, after) = if let Some(a) = s.strip_prefix("https://") {
        (true, a)
    } else if let Some(a) = s.strip_prefix("http://") {
        (false, a)
    } else {
        return Err("expected an `http://` or `https://` URL");
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err("credentials in the URL are not supported");
    }
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or("unterminated IPv6 address")?;
        let (h, p) = authority.split_at(close + 1);
        if h[1..close].parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        (h, p)
    } else {
        match authority.rfind(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        }
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("the host has characters a host name cannot have");
    }
    let port = match port {
        "" => {
            if tls {
                443
            } else {
                80
            }
        }
        p => match p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
            Some(p) if p != 0 => p,
            _ => return Err("invalid port"),
        },
    };
    Ok(HttpUrl {
        tls,
        host,
        port,
        rest,
    })
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An `http(s)` URL used to fetch keys or metadata; a plain `http` one off this machine is a
/// warning (keys fetched in clear text can be replaced on the way).
fn fetch_url(r: &mut Reader<'_>, n: &Node, key: &str) -> Option<String> {
    let s = r.string(n, key)?;
    match parse_http_url(s) {
        Ok(u) => {
            if !u.tls && !is_loopback(u.host) {
                r.warning(
                    n.mark,
                    key,
                    format!("`{s}` uses plain http to another host; keys and metadata fetched from it can be tampered with"),
                );
            }
            Some(s.to_owned())
        }
        Err(why) => {
            r.error(n.mark, key, format!("invalid URL `{s}`: {why}"));
            None
        }
    }
}

fn issuers(r: &mut Reader<'_>, n: &Node, base_dir: &Path) -> Option<Vec<IssuerConfig>> {
    let items = r.seq(n, "issuers")?;
    if items.is_empty() {
        r.error(n.mark, "issuers", "list at least one trusted issuer");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let key = index("issuers", i);
        match issuer(r, item, &key, base_dir) {
            Some((iss, mark)) => {
                if out.iter().any(|o: &IssuerConfig| o.issuer == iss.issuer) {
                    r.error(
                        mark,
                        &join(&key, "issuer"),
                        format!("issuer `{}` is listed twice", iss.issuer),
                    );
                    ok = false;
                }
                out.push(iss);
            }
            None => ok = false,
        }
    }
    if ok {
        // Opaque tokens carry no issuer: with several introspecting issuers, one must be named
        // the destination of opaque tokens (asking each in turn would leak every token to
        // every provider).
        let introspecting: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].introspection.is_some())
            .collect();
        let defaults = introspecting
            .iter()
            .filter(|&&i| {
                out[i]
                    .introspection
                    .as_ref()
                    .is_some_and(|c| c.default_for_opaque)
            })
            .count();
        if introspecting.len() > 1 && defaults != 1 {
            r.error(
                n.mark,
                "issuers",
                format!(
                    "{} issuers configure `introspection`; mark exactly one with `introspection.default: true` (opaque tokens are sent to it), found {defaults}",
                    introspecting.len()
                ),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

fn issuer(
    r: &mut Reader<'_>,
    n: &Node,
    key: &str,
    base_dir: &Path,
) -> Option<(IssuerConfig, Mark)> {
    let m = r.map(n, key, ISSUER_KEYS)?;
    let iss_node = r.required(&m, key, "issuer");
    let issuer = iss_node.and_then(|n| fetch_url(r, n, &join(key, "issuer")));
    let audiences = r.required(&m, key, "audiences").and_then(|n| {
        let k = join(key, "audiences");
        let items = r.strings(n, &k)?;
        if items.is_empty() {
            r.error(n.mark, &k, "list at least one accepted audience");
            return None;
        }
        let mut ok = true;
        for (i, (s, item)) in items.iter().enumerate() {
            if s.is_empty() {
                r.error(item.mark, &index(&k, i), "an audience cannot be empty");
                ok = false;
            }
        }
        ok.then(|| items.into_iter().map(|(s, _)| s.to_owned()).collect())
    });
    let jwks_uri = match m.get("jwks_uri") {
        None => Some(None),
        Some(n) => fetch_url(r, n, &join(key, "jwks_uri")).map(Some),
    };
    let algorithms = opt(
        r,
        &m,
        key,
        "algorithms",
        DEFAULT_ALGORITHMS.to_vec(),
        algorithms,
    );
    let leeway = opt(r, &m, key, "leeway", Duration::from_secs(30), |r, n, k| {
        let d = r.duration(n, k)?;
        if d > MAX_LEEWAY {
            r.error(n.mark, k, "`leeway` must be at most 5m");
            return None;
        }
        Some(d)
    });
    let refresh = opt(
        r,
        &m,
        key,
        "jwks_refresh_interval",
        Duration::from_secs(300),
        |r, n, k| positive(r, n, k, r_duration),
    );
    let min_refresh = opt(
        r,
        &m,
        key,
        "jwks_min_refresh_interval",
        Duration::from_secs(30),
        |r, n, k| positive(r, n, k, r_duration),
    );
    if let (Some(a), Some(b), Some(n)) = (refresh, min_refresh, m.get("jwks_min_refresh_interval"))
    {
        if b > a {
            r.error(
                n.mark,
                &join(key, "jwks_min_refresh_interval"),
                "`jwks_min_refresh_interval` cannot be longer than `jwks_refresh_interval`",
            );
        }
    }
    let fetch_timeout = opt(
        r,
        &m,
        key,
        "fetch_timeout",
        Duration::from_secs(5),
        |r, n, k| positive(r, n, k, r_duration),
    );
    let patient_claim = opt(
        r,
        &m,
        key,
        "patient_claim",
        "patient".to_owned(),
        |r, n, k| {
            let s = r.string(n, k)?;
            if s.is_empty() {
                r.error(n.mark, k, "the patient claim name is empty");
                return None;
            }
            Some(s.to_owned())
        },
    );
    let introspection = match m.get("introspection") {
        None => Some(None),
        Some(n) => introspection(r, n, &join(key, "introspection"), base_dir).map(Some),
    };
    let mark = iss_node.map_or(m.mark, |n| n.mark);
    Some((
        IssuerConfig {
            issuer: issuer?,
            audiences: audiences?,
            jwks_uri: jwks_uri?,
            algorithms: algorithms?,
            leeway: leeway?,
            jwks_refresh_interval: refresh?,
            jwks_min_refresh_interval: min_refresh?,
            fetch_timeout: fetch_timeout?,
            patient_claim: patient_claim?,
            introspection: introspection?,
        },
        mark,
    ))
}

/// An issuer's `introspection:` block.
fn introspection(
    r: &mut Reader<'_>,
    n: &Node,
    key: &str,
    base_dir: &Path,
) -> Option<IntrospectionConfig> {
    let m = r.map(n, key, INTROSPECTION_KEYS)?;
    let endpoint = match m.get("endpoint") {
        None => Some(None),
        Some(n) => fetch_url(r, n, &join(key, "endpoint")).map(Some),
    };
    let revocation_endpoint = match m.get("revocation_endpoint") {
        None => Some(None),
        Some(n) => fetch_url(r, n, &join(key, "revocation_endpoint")).map(Some),
    };
    let client_id = r.required(&m, key, "client_id").and_then(|n| {
        let k = join(key, "client_id");
        let s = r.string(n, &k)?;
        if s.is_empty() {
            r.error(n.mark, &k, "the client id is empty");
            return None;
        }
        Some(s.to_owned())
    });
    let auth = client_auth(r, &m, key, base_dir);
    let timeout = opt(r, &m, key, "timeout", Duration::from_secs(2), |r, n, k| {
        positive(r, n, k, r_duration)
    });
    let cache_max_ttl = opt(
        r,
        &m,
        key,
        "cache_max_ttl",
        Duration::from_secs(30),
        |r, n, k| {
            let d = positive(r, n, k, r_duration)?;
            if d > MAX_INTROSPECTION_TTL {
                r.error(n.mark, k, "`cache_max_ttl` must be at most 5m: a revocation at the provider stays unseen for as long");
                return None;
            }
            if d > Duration::from_secs(60) {
                r.warning(n.mark, k, "`cache_max_ttl` over a minute: a revocation at the provider can take that long to be seen");
            }
            Some(d)
        },
    );
    let negative_ttl = opt(
        r,
        &m,
        key,
        "negative_ttl",
        Duration::from_secs(5),
        |r, n, k| {
            let d = positive(r, n, k, r_duration)?;
            if d > Duration::from_secs(60) {
                r.error(n.mark, k, "`negative_ttl` must be at most 1m: a token refused once (e.g. during a provider hiccup) would stay refused that long");
                return None;
            }
            Some(d)
        },
    );
    let default_for_opaque = opt(r, &m, key, "default", false, |r, n, k| r.bool(n, k));
    let breaker_failures = opt(r, &m, key, "breaker_failures", 5, |r, n, k| {
        let v = positive(r, n, k, r_u64)?;
        if v > 1000 {
            r.error(n.mark, k, "`breaker_failures` must be at most 1000");
            return None;
        }
        Some(v as u32)
    });
    let breaker_open_for = opt(
        r,
        &m,
        key,
        "breaker_open_for",
        Duration::from_secs(5),
        |r, n, k| positive(r, n, k, r_duration),
    );
    Some(IntrospectionConfig {
        endpoint: endpoint?,
        revocation_endpoint: revocation_endpoint?,
        client_id: client_id?,
        auth: auth?,
        timeout: timeout?,
        cache_max_ttl: cache_max_ttl?,
        negative_ttl: negative_ttl?,
        default_for_opaque: default_for_opaque?,
        breaker_failures: breaker_failures?,
        breaker_open_for: breaker_open_for?,
    })
}

/// `auth` and the credential keys it needs (exactly one secret source for the secret
/// methods; `private_key_file` for `private_key_jwt`).
fn client_auth(
    r: &mut Reader<'_>,
    m: &MapView<'_>,
    key: &str,
    base_dir: &Path,
) -> Option<ClientAuth> {
    let auth_key = join(key, "auth");
    let method = match m.get("auth") {
        None => "client_secret_basic",
        Some(n) => r.string(n, &auth_key)?,
    };
    let auth_mark = m.get("auth").map_or(m.mark, |n| n.mark);
    let env = m.get("client_secret_env");
    let file = m.get("client_secret_file");
    let pkey = m.get("private_key_file");
    let unexpected = |r: &mut Reader<'_>, node: Option<&Node>, name: &str, why: &str| {
        if let Some(n) = node {
            r.error(n.mark, &join(key, name), why.to_owned());
        }
    };
    match method {
        "client_secret_basic" | "client_secret_post" => {
            unexpected(
                r,
                pkey,
                "private_key_file",
                "`private_key_file` is only used with `auth: private_key_jwt`",
            );
            for k in ["private_key_alg", "private_key_kid"] {
                unexpected(r, m.get(k), k, "only used with `auth: private_key_jwt`");
            }
            let source = match (env, file) {
                (Some(_), Some(n)) => {
                    r.error(
                        n.mark,
                        &join(key, "client_secret_file"),
                        "give the secret by `client_secret_env` or `client_secret_file`, not both",
                    );
                    None
                }
                (Some(n), None) => {
                    let k = join(key, "client_secret_env");
                    let name = r.string(n, &k)?;
                    if name.is_empty() || name.contains('=') {
                        r.error(n.mark, &k, "not an environment variable name");
                        return None;
                    }
                    Some(SecretSource::Env(name.to_owned()))
                }
                (None, Some(n)) => {
                    let k = join(key, "client_secret_file");
                    let path = r.string(n, &k)?;
                    if path.is_empty() {
                        r.error(n.mark, &k, "the secret file path is empty");
                        return None;
                    }
                    Some(SecretSource::File(base_dir.join(path)))
                }
                (None, None) => {
                    r.error(
                        auth_mark,
                        &auth_key,
                        format!("`{method}` needs the client secret: set `client_secret_env` (an environment variable name) or `client_secret_file`; the secret itself never goes in this file"),
                    );
                    None
                }
            }?;
            Some(if method == "client_secret_basic" {
                ClientAuth::SecretBasic(source)
            } else {
                ClientAuth::SecretPost(source)
            })
        }
        "private_key_jwt" => {
            unexpected(
                r,
                env,
                "client_secret_env",
                "not used with `auth: private_key_jwt`",
            );
            unexpected(
                r,
                file,
                "client_secret_file",
                "not used with `auth: private_key_jwt`",
            );
            let Some(n) = pkey else {
                r.error(
                    auth_mark,
                    &auth_key,
                    "`private_key_jwt` needs `private_key_file` (a PEM RSA or EC P-256 private key)",
                );
                return None;
            };
            let k = join(key, "private_key_file");
            let path = r.string(n, &k)?;
            if path.is_empty() {
                r.error(n.mark, &k, "the private key path is empty");
                return None;
            }
            let alg = opt(
                r,
                m,
                key,
                "private_key_alg",
                Algorithm::RS256,
                |r, n, k| match r.string(n, k)? {
                    "RS256" => Some(Algorithm::RS256),
                    "PS256" => Some(Algorithm::PS256),
                    "ES256" => Some(Algorithm::ES256),
                    other => {
                        r.error(
                            n.mark,
                            k,
                            format!("unsupported assertion algorithm `{other}`; expected RS256, PS256 or ES256"),
                        );
                        None
                    }
                },
            )?;
            let kid = opt(r, m, key, "private_key_kid", None, |r, n, k| {
                Some(Some(r.string(n, k)?.to_owned()))
            })?;
            Some(ClientAuth::PrivateKeyJwt {
                key_file: base_dir.join(path),
                alg,
                kid,
            })
        }
        other => {
            r.error(
                auth_mark,
                &auth_key,
                format!("unknown client authentication `{other}`; expected client_secret_basic, client_secret_post or private_key_jwt"),
            );
            None
        }
    }
}

/// The top-level `revocation:` section.
fn revocation(r: &mut Reader<'_>, m: &MapView<'_>, base_dir: &Path) -> Option<RevocationConfig> {
    let admin_token = match (m.get("admin_token_env"), m.get("admin_token_file")) {
        (None, None) => Some(None),
        (Some(_), Some(n)) => {
            r.error(
                n.mark,
                "revocation.admin_token_file",
                "give the admin token by `admin_token_env` or `admin_token_file`, not both",
            );
            None
        }
        (Some(n), None) => {
            let k = "revocation.admin_token_env";
            r.string(n, k).and_then(|name| {
                if name.is_empty() || name.contains('=') {
                    r.error(n.mark, k, "not an environment variable name");
                    None
                } else {
                    Some(Some(SecretSource::Env(name.to_owned())))
                }
            })
        }
        (None, Some(n)) => {
            let k = "revocation.admin_token_file";
            r.string(n, k).and_then(|path| {
                if path.is_empty() {
                    r.error(n.mark, k, "the admin token file path is empty");
                    None
                } else {
                    Some(Some(SecretSource::File(base_dir.join(path))))
                }
            })
        }
    };
    let entry_ttl = opt(
        r,
        m,
        "revocation",
        "entry_ttl",
        Duration::from_secs(3600),
        |r, n, k| positive(r, n, k, r_duration),
    );
    let max_entries = opt(r, m, "revocation", "max_entries", 100_000, |r, n, k| {
        positive(r, n, k, r_u64)
    });
    let redis_url = match m.get("redis_url") {
        None => Some(None),
        Some(n) => {
            let k = "revocation.redis_url";
            r.string(n, k).and_then(|s| {
                // Same rules as `rate_limit.redis.url`: no TLS client is built in.
                if s.starts_with("rediss://") {
                    r.error(
                        n.mark,
                        k,
                        "TLS to Redis (`rediss://`) is not supported; reach Redis over a private network or a local TLS tunnel",
                    );
                    return None;
                }
                match redis::parse_redis_url(s) {
                    Some(u)
                        if u.scheme() == "redis" && u.host_str().is_some_and(|h| !h.is_empty()) =>
                    {
                        Some(Some(s.to_owned()))
                    }
                    _ => {
                        r.error(
                            n.mark,
                            k,
                            format!("invalid Redis URL `{s}`; expected `redis://[user:password@]host[:port][/db]`"),
                        );
                        None
                    }
                }
            })
        }
    };
    let redis_channel = opt(
        r,
        m,
        "revocation",
        "redis_channel",
        "fhirwall:revocations".to_owned(),
        |r, n, k| {
            let s = r.string(n, k)?;
            if s.is_empty() {
                r.error(n.mark, k, "the channel name is empty");
                return None;
            }
            Some(s.to_owned())
        },
    );
    Some(RevocationConfig {
        admin_token: admin_token?,
        entry_ttl: entry_ttl?,
        max_entries: max_entries?,
        redis_url: redis_url?,
        redis_channel: redis_channel?,
    })
}

fn algorithms(r: &mut Reader<'_>, n: &Node, key: &str) -> Option<Vec<Algorithm>> {
    let items = r.strings(n, key)?;
    if items.is_empty() {
        r.error(n.mark, key, "list at least one algorithm");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, (s, item)) in items.iter().enumerate() {
        let k = index(key, i);
        let alg = match *s {
            "RS256" => Some(Algorithm::RS256),
            "RS384" => Some(Algorithm::RS384),
            "RS512" => Some(Algorithm::RS512),
            "PS256" => Some(Algorithm::PS256),
            "PS384" => Some(Algorithm::PS384),
            "PS512" => Some(Algorithm::PS512),
            "ES256" => Some(Algorithm::ES256),
            "ES384" => Some(Algorithm::ES384),
            "EdDSA" => Some(Algorithm::EdDSA),
            "HS256" | "HS384" | "HS512" => {
                // A shared secret would let anyone who can verify tokens also mint them.
                r.error(item.mark, &k, format!("`{s}` is a shared-secret algorithm and is not accepted; use an asymmetric one (RS*, PS*, ES*, EdDSA)"));
                None
            }
            "none" | "None" | "NONE" => {
                r.error(item.mark, &k, "unsigned tokens (`none`) are never accepted");
                None
            }
            other => {
                r.error(
                    item.mark,
                    &k,
                    format!("unknown algorithm `{other}`; expected one of: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                );
                None
            }
        };
        match alg {
            Some(a) if out.contains(&a) => {
                r.error(item.mark, &k, format!("`{s}` is listed twice"));
                ok = false;
            }
            Some(a) => out.push(a),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
