//! Hot reload: the configuration file and the policies it names, re-read on SIGHUP and when
//! their content changes, validated by the same loader as startup and `fhirwall check`, and
//! swapped in as one new [`Runtime`].
//!
//! - **Atomic.** A reload builds a whole new [`Runtime`] and swaps it in the
//!   `ArcSwap<Runtime>` the proxy loads once per request; a request in flight keeps the
//!   `Arc<Runtime>` it started with and finishes under that version.
//! - **All or nothing.** A file with an error is refused with the same `file:line:col` messages
//!   as `fhirwall check`, logged at `error`; so is a change to a setting that needs a restart
//!   ([`restart_only_changes`]): the reload is refused as a whole, naming the keys, rather
//!   than applied in part, so what runs is always one version of the files. The last good
//!   version keeps serving either way.
//! - **Detection.** The files are polled (`reload.interval`, 2 s) by content hash, which also
//!   sees a Kubernetes ConfigMap update (an atomic symlink swap: the path stays, the content
//!   changes). A refused version is not retried until the content changes again or SIGHUP.
//! - **Rate-limit state** is kept when nothing it depends on changed (quotas, the
//!   distinct-patients guard, `base_path`, `rate_limit`, `forwarding.trust_forwarded_for`);
//!   otherwise the limiter is rebuilt and local counters start afresh (counters shared
//!   through Redis live in Redis and carry on).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::admin::Check;
use crate::config::{AuditConfig, Config, Diagnostics, Severity};
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::proxy::Runtime;
use crate::ratelimit::Limiter;

/// Time given to a writer to finish the file after a change is seen, before it is read: an
/// editor or `cp` that writes in several steps is then read once, whole.
const SETTLE: Duration = Duration::from_millis(250);

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// A watched file's content changed.
    FileChange,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new version serves.
    Applied {
        /// The active policy version.
        policy_version: String,
        /// Whether the rate-limit state was kept (false: rebuilt from fresh).
        limits_kept: bool,
    },
    /// The files are invalid or need a restart; the previous version keeps serving.
    Refused {
        /// Every reason, one per line: `file:line:col: message`, or the keys that need a
        /// restart.
        reasons: Vec<String>,
    },
}

/// The last reload attempt, for `/readyz`.
#[derive(Debug, Clone)]
struct LastAttempt {
    at: SystemTime,
    trigger: Trigger,
    outcome: Outcome,
}

/// Reloads the configuration and swaps the runtime. One per process; [`Reloader::run`] is
/// its background task.
pub struct Reloader {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    /// The configuration serving now. Its restart-only parts are those of startup.
    current: Mutex<Config>,
    last: Mutex<Option<LastAttempt>>,
    /// The rate limiter's background work (pruning, Redis probe), restarted with the limiter.
    limiter_task: Mutex<Option<JoinHandle<()>>>,
}

/// Content hashes of the watched files (`None`: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<[u8; 32]>)>);

// === impl Reloader ===

impl Reloader {
    /// A reloader over the runtime built from `config` at startup; publishes the startup
    /// version in the metrics.
    pub fn new(config: Config, runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> Self {
        metrics
            .policy_info
            .with_label_values(&[config.policy.version()])
            .set(1);
        if let Some(shadow) = &config.shadow_policy {
            metrics
                .shadow_policy_info
                .with_label_values(&[shadow.version()])
                .set(1);
        }
        metrics.config_last_reload_successful.set(1);
        metrics.last_reload_success_timestamp.set(unix_now());
        Reloader {
            runtime,
            metrics,
            current: Mutex::new(config),
            last: Mutex::new(None),
            limiter_task: Mutex::new(None),
        }
    }

    /// Background work until the process ends: reloads on SIGHUP and, when `reload.watch`
    /// is on, when a watched file changes; runs the rate limiter's own background work.
    /// `signal_ready` is set once SIGHUP is handled (before it, SIGHUP would end the process).
    pub async fn run(self: Arc<Self>, signal_ready: tokio::sync::watch::Sender<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload on signal is off");
                None
            }
        };
        let _ = signal_ready.send(true);
        self.restart_limiter_task();
        let mut seen = self.fingerprint();
        loop {
            let (watch, interval) = {
                let c = self.current.lock();
                (c.reload.watch, c.reload.interval)
            };
            let signalled = async {
                let received = match hup.as_mut() {
                    Some(h) => h.recv().await.is_some(),
                    None => false,
                };
                if !received {
                    // No handler, or the stream ended: only the poll remains.
                    std::future::pending::<()>().await;
                }
            };
            let trigger = tokio::select! {
                () = signalled => Trigger::Signal,
                () = tokio::time::sleep(interval), if watch => {
                    if self.fingerprint() == seen {
                        continue;
                    }
                    tokio::time::sleep(SETTLE).await;
                    Trigger::FileChange
                }
            };
            // What is about to be read; a change after this point is seen on the next poll.
            seen = self.fingerprint();
            self.reload(trigger);
            // The watched set follows the configuration (a new `policy:` path, say).
            seen = self.refingerprint(seen);
        }
    }

    /// Reads the files and, when valid and free of restart-only changes, swaps the runtime.
    /// Logs and counts the attempt either way.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let started = std::time::Instant::now();
        let source = self.current.lock().source.clone();
        let outcome = match Config::load_with_warnings(&source) {
            Err(diags) => {
                for d in diags.0.iter().filter(|d| d.severity == Severity::Error) {
                    tracing::error!(
                        reload.trigger = trigger.as_str(),
                        file = %d.file.display(),
                        line = d.line,
                        col = d.col,
                        key = %d.key,
                        "reload refused: {d}"
                    );
                }
                Outcome::Refused {
                    reasons: error_lines(&diags),
                }
            }
            Ok((config, warnings)) => {
                for w in &warnings.0 {
                    tracing::warn!(
                        reload.trigger = trigger.as_str(),
                        file = %w.file.display(),
                        line = w.line,
                        col = w.col,
                        key = %w.key,
                        "{}",
                        w.message
                    );
                }
                self.apply(config, trigger, started)
            }
        };
        self.record(trigger, &outcome);
        outcome
    }

    /// The `policy` readiness check: the active versions and the last reload. A refused
    /// reload does not fail readiness: the last good version serves.
    pub fn policy_check(&self) -> Check {
        let (version, shadow) = {
            let rt = self.runtime.load();
            (
                rt.policy.version().to_owned(),
                rt.shadow.as_ref().map(|s| s.version().to_owned()),
            )
        };
        let mut detail = format!("version {version}");
        if let Some(s) = shadow {
            detail.push_str(&format!(", shadow version {s}"));
        }
        match &*self.last.lock() {
            None => detail.push_str("; no reload yet"),
            Some(last) => {
                let at = crate::proxy::format_time(last.at);
                let by = last.trigger.as_str();
                match &last.outcome {
                    Outcome::Applied { .. } => {
                        detail.push_str(&format!("; last reload ({by}) succeeded at {at}"))
                    }
                    Outcome::Refused { reasons } => detail.push_str(&format!(
                        "; last reload ({by}) refused at {at}, the previous version serves: {}",
                        reasons.first().map_or("", String::as_str)
                    )),
                }
            }
        }
        Check::pass("policy", detail)
    }

    fn apply(&self, config: Config, trigger: Trigger, started: std::time::Instant) -> Outcome {
        let mut current = self.current.lock();
        let keys = restart_only_changes(&current, &config);
        if !keys.is_empty() {
            let keys = keys.join(", ");
            tracing::error!(
                reload.trigger = trigger.as_str(),
                keys = %keys,
                "reload refused: these settings cannot change without a restart; the running configuration is unchanged"
            );
            return Outcome::Refused {
                reasons: vec![format!(
                    "{}: cannot change without a restart: {keys}",
                    config.source.display()
                )],
            };
        }
        let old = self.runtime.load_full();
        let kept = limiter_inputs_unchanged(&current, &config).then(|| old.limiter.clone());
        let limits_kept = kept.is_some();
        let runtime = match build_runtime(&config, &self.metrics, kept) {
            Ok(rt) => rt,
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(
                    reload.trigger = trigger.as_str(),
                    error = %e,
                    "reload refused: the new configuration cannot be put in place; the running configuration is unchanged"
                );
                return Outcome::Refused {
                    reasons: vec![format!("{}: {e}", config.source.display())],
                };
            }
        };
        self.runtime.store(Arc::new(runtime));
        swap_info(
            &self.metrics.policy_info,
            Some(old.policy.version()),
            Some(config.policy.version()),
        );
        swap_info(
            &self.metrics.shadow_policy_info,
            old.shadow.as_ref().map(|s| s.version()),
            config.shadow_policy.as_ref().map(|s| s.version()),
        );
        tracing::info!(
            reload.trigger = trigger.as_str(),
            policy.version = config.policy.version(),
            policy.previous = old.policy.version(),
            shadow.version = config.shadow_policy.as_ref().map_or("-", |s| s.version()),
            ratelimit.state = if limits_kept { "kept" } else { "reset" },
            reload.duration_ms = started.elapsed().as_millis() as u64,
            "configuration reloaded"
        );
        let version = config.policy.version().to_owned();
        *current = config;
        drop(current);
        if !limits_kept {
            self.restart_limiter_task();
        }
        Outcome::Applied {
            policy_version: version,
            limits_kept,
        }
    }

    fn record(&self, trigger: Trigger, outcome: &Outcome) {
        let m = &self.metrics;
        match outcome {
            Outcome::Applied { .. } => {
                m.reloads.with_label_values(&["success"]).inc();
                m.config_last_reload_successful.set(1);
                m.last_reload_success_timestamp.set(unix_now());
            }
            Outcome::Refused { .. } => {
                m.reloads.with_label_values(&["failure"]).inc();
                m.config_last_reload_successful.set(0);
            }
        }
        *self.last.lock() = Some(LastAttempt {
            at: SystemTime::now(),
            trigger,
            outcome: outcome.clone(),
        });
    }

    /// (Re)starts the background work of the limiter in force, stopping the previous one's.
    fn restart_limiter_task(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // Only reachable through a reload outside the runtime (a test harness); the
            // limiter still limits, it just is not pruned.
            tracing::error!("no tokio runtime: the rate limiter's background work is not running");
            return;
        };
        let limiter = self.runtime.load().limiter.clone();
        let task = handle.spawn(async move { limiter.run().await });
        if let Some(old) = self.limiter_task.lock().replace(task) {
            old.abort();
        }
    }

    fn watched(&self) -> Vec<PathBuf> {
        let c = self.current.lock();
        let mut files = vec![c.source.clone(), c.policy_path.clone()];
        files.extend(c.shadow_policy_path.clone());
        files
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.watched())
    }

    /// `seen`, extended to the files the configuration names now.
    fn refingerprint(&self, seen: Fingerprint) -> Fingerprint {
        let files = self.watched();
        if seen.0.iter().map(|(p, _)| p).eq(files.iter()) {
            seen
        } else {
            Fingerprint::of(&files)
        }
    }
}

// === impl Trigger ===

impl Trigger {
    /// `signal` or `file`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::FileChange => "file",
        }
    }
}

// === impl Fingerprint ===

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Self {
        Fingerprint(files.iter().map(|p| (p.clone(), hash_file(p))).collect())
    }
}

/// SHA-256 of a file's content, read through any symlink.
fn hash_file(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Compiles the per-request runtime from a configuration. `limiter`: the rate limiter to
/// keep (its state with it) instead of building a fresh one.
pub fn build_runtime(
    config: &Config,
    metrics: &Arc<Metrics>,
    limiter: Option<Arc<Limiter>>,
) -> anyhow::Result<Runtime> {
    let limiter = match limiter {
        Some(l) => l,
        None => Arc::new(Limiter::new(
            config.policy.rate_limits(),
            config.policy.base_path(),
            &config.rate_limit,
            config.forwarding.trust_forwarded_for,
            Some(metrics.clone()),
        )?),
    };
    Ok(Runtime {
        policy: config.policy.clone(),
        upstream: Upstream::new(&config.upstream, &config.forwarding)?,
        realm: config.realm.as_str().into(),
        audit_allow_query: config.audit.allow_query_params.clone(),
        limiter,
        shadow: config.shadow_policy.clone(),
        cors: config.cors.as_ref().map(crate::proxy::cors::Cors::new),
    })
}

/// The keys of `new` that differ from `running` and cannot change without a restart: the
/// listeners, worker threads, issuers and token cache (the authenticator, its JWKS refresher
/// and its cache are built once), revocation, the audit trail (the writer holds the file;
/// `audit.allow_query_params` alone is reloadable), logging, and process settings.
///
/// Reloadable: `realm`, `upstream`, `forwarding`, `cors`, `rate_limit`, `policy`, `shadow_policy`,
/// `reload`, `audit.allow_query_params`. Every field is named below, so a new configuration
/// key does not compile until it is classified here.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        source: _,
        listen,
        listeners,
        admin_listen,
        realm: _,
        threads,
        upstream: _,
        issuers,
        token_cache,
        revocation,
        audit,
        forwarding: _,
        cors: _,
        log,
        rate_limit: _,
        policy_path: _,
        policy: _,
        shadow_policy_path: _,
        shadow_policy: _,
        reload: _,
        shutdown_grace,
        upgrade_sock,
    } = new;
    let audit_fixed = |a: &AuditConfig| AuditConfig {
        allow_query_params: Vec::new(),
        ..a.clone()
    };
    let mut keys = Vec::new();
    let mut differs = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    // A listener's TLS settings (certificate paths, client CA) are bound into its socket at
    // start; the certificate files themselves are re-read by `tls::ServerCertificate::watch`.
    differs(
        *listen != running.listen || *listeners != running.listeners,
        "listen",
    );
    differs(*admin_listen != running.admin_listen, "admin_listen");
    differs(*threads != running.threads, "threads");
    differs(*issuers != running.issuers, "issuers");
    differs(*token_cache != running.token_cache, "token_cache");
    differs(*revocation != running.revocation, "revocation");
    differs(audit_fixed(audit) != audit_fixed(&running.audit), "audit");
    differs(*log != running.log, "log");
    differs(*shutdown_grace != running.shutdown_grace, "shutdown_grace");
    differs(*upgrade_sock != running.upgrade_sock, "upgrade_sock");
    keys
}

/// Whether the rate limiter of `running` can serve `new` unchanged (its state kept).
fn limiter_inputs_unchanged(running: &Config, new: &Config) -> bool {
    running.policy.rate_limits() == new.policy.rate_limits()
        && running.policy.base_path() == new.policy.base_path()
        && running.rate_limit == new.rate_limit
        && running.forwarding.trust_forwarded_for == new.forwarding.trust_forwarded_for
}

/// An info gauge moves from `old` to `new`: the old series goes away rather than staying at 0.
fn swap_info(gauge: &prometheus::IntGaugeVec, old: Option<&str>, new: Option<&str>) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        let _ = gauge.remove_label_values(&[old]);
    }
    if let Some(new) = new {
        gauge.with_label_values(&[new]).set(1);
    }
}

/// The errors of a refused load, `file:line:col: message` each.
fn error_lines(diags: &Diagnostics) -> Vec<String> {
    diags
        .0
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1\nroutes:\n  - id: metadata\n    methods: [GET]\n    path: /metadata\n    public: true\n";

    const CONFIG: &str = "\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream:
  url: http://127.0.0.1:8081
issuers:
  - issuer: https://idp.example.org
    audiences: [fhir]
";

    /// Loads `CONFIG` plus `extra` from a folder holding `POLICY` (plus `policy_extra`).
    fn load(dir: &Path, extra: &str, policy_extra: &str) -> Config {
        std::fs::write(dir.join("policy.yaml"), format!("{POLICY}{policy_extra}"))
            .expect("write policy");
        Config::from_str_at(&format!("{CONFIG}{extra}"), &dir.join("fhirwall.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn reloadable_changes_need_no_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = load(dir.path(), "", "");
        let new = load(
            dir.path(),
            "realm: other\nforwarding: { trust_forwarded_for: true }\naudit: { allow_query_params: [_id] }\nreload: { interval: 5s }\n",
            "quotas:\n  - { id: q, key: client, rate: 5/1m }\n",
        );
        assert_eq!(restart_only_changes(&running, &new), Vec::<&str>::new());
    }

    #[test]
    fn each_restart_only_change_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = load(dir.path(), "", "");
        let new = load(
            dir.path(),
            "threads: 3\ntoken_cache: { max_entries: 9 }\naudit: { durability: strict }\nlog: { level: debug }\nshutdown_grace: 30s\n",
            "",
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            vec!["threads", "token_cache", "audit", "log", "shutdown_grace"]
        );
        let moved = Config::from_str_at(
            &CONFIG.replace("127.0.0.1:8080", "127.0.0.1:8088"),
            &dir.path().join("fhirwall.yaml"),
        )
        .unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(restart_only_changes(&running, &moved), vec!["listen"]);
    }

    #[test]
    fn the_limiter_is_kept_only_while_its_inputs_are_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let quota = "quotas:\n  - { id: q, key: client, rate: 5/1m }\n";
        let running = load(dir.path(), "", quota);
        let same_quota_new_route = load(
            dir.path(),
            "realm: other\n",
            &format!(
                "  - id: extra\n    methods: [GET]\n    path: /extra\n    public: true\n{quota}"
            ),
        );
        assert!(limiter_inputs_unchanged(&running, &same_quota_new_route));
        let other_rate = load(
            dir.path(),
            "",
            "quotas:\n  - { id: q, key: client, rate: 6/1m }\n",
        );
        assert!(!limiter_inputs_unchanged(&running, &other_rate));
        let trusting = load(
            dir.path(),
            "forwarding: { trust_forwarded_for: true }\n",
            quota,
        );
        assert!(!limiter_inputs_unchanged(&running, &trusting));
    }

    #[test]
    fn an_info_gauge_moves_to_the_new_version_and_forgets_the_old() {
        let metrics = Metrics::new();
        metrics.policy_info.with_label_values(&["aaa"]).set(1);
        swap_info(&metrics.policy_info, Some("aaa"), Some("bbb"));
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(
            text.contains("fhirwall_policy_info{version=\"bbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("version=\"aaa\""), "{text}");
        swap_info(&metrics.policy_info, Some("bbb"), None);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(!text.contains("fhirwall_policy_info{"), "{text}");
    }

    #[test]
    fn a_file_fingerprint_follows_content_through_a_symlink_swap() {
        // Kubernetes ConfigMap volumes: the file is a symlink whose target is swapped.
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, link) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("link"),
        );
        std::fs::write(&a, "one").expect("write");
        std::fs::write(&b, "two").expect("write");
        std::os::unix::fs::symlink(&a, &link).expect("symlink");
        let before = Fingerprint::of(std::slice::from_ref(&link));
        let tmp = dir.path().join("link.tmp");
        std::os::unix::fs::symlink(&b, &tmp).expect("symlink");
        std::fs::rename(&tmp, &link).expect("swap");
        let after = Fingerprint::of(std::slice::from_ref(&link));
        assert_ne!(before, after);
        assert_eq!(after, Fingerprint::of(&[link]));
    }
}
