//! Wiring: a validated [`Config`] becomes pingora services — the proxy, the admin listener,
//! the JWKS refresher, the audit writer and the revocation subscriber — and runs until a
//! signal stops it.
//!
//! pingora's signal handling applies: SIGTERM drains in-flight requests (graceful), SIGINT
//! stops at once, SIGQUIT hands the listeners to a new process (`--upgrade`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::admin::{self, Check, HealthSource};
use crate::audit::AuditSink;
use crate::auth::{Authenticator, RedisPropagation};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, Runtime};
use crate::ratelimit::Limiter;

/// Seconds in-flight requests get to finish after SIGTERM.
const GRACE_PERIOD_SECS: u64 = 10;

/// Runs the gateway until it is stopped. Returns only on a startup error; once serving,
/// pingora ends the process itself.
pub fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Arc::new(ArcSwap::from_pointee(build_runtime(&config, &metrics)?));
    metrics
        .policy_info
        .with_label_values(&[config.policy.version()])
        .set(1);
    let auth = Arc::new(
        Authenticator::build(
            &config.issuers,
            &config.token_cache,
            &config.revocation,
            metrics.clone(),
        )
        .context("setting up token introspection")?,
    );
    // Revocations shared with the other instances, when Redis is configured.
    let propagation = match &config.revocation.redis_url {
        None => None,
        Some(url) => Some(Arc::new(
            RedisPropagation::new(
                url,
                &config.revocation.redis_channel,
                config.revocation.max_entries,
                auth.clone(),
                metrics.clone(),
            )
            .context("setting up revocation propagation through Redis")?,
        )),
    };
    let revoke = match &config.revocation.admin_token {
        None => None,
        Some(source) => {
            let token = crate::auth::read_secret(source)
                .map_err(|e| anyhow::anyhow!("reading the admin token: {e}"))?;
            // Short tokens can be guessed through the endpoint; demand a real secret.
            if token.len() < 16 {
                anyhow::bail!("the admin token must be at least 16 characters");
            }
            Some(Arc::new(admin::RevokeEndpoint::new(
                &token,
                auth.clone(),
                config.revocation.entry_ttl,
                propagation.clone().map(|p| p as Arc<dyn admin::Propagate>),
            )))
        }
    };
    let (audit, audit_writer) = AuditSink::open(&config.audit, metrics.clone())
        .with_context(|| format!("opening the audit trail {:?}", config.audit.target))?;
    let admin_listener = std::net::TcpListener::bind(config.admin_listen)
        .with_context(|| format!("binding the admin listener on {}", config.admin_listen))?;
    admin_listener.set_nonblocking(true)?;

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(GRACE_PERIOD_SECS),
        // pingora's own pid/upgrade files default to /tmp paths; keep them per process so
        // several gateways (and tests) can run side by side.
        pid_file: std::env::temp_dir()
            .join(format!("fhirwall-{}.pid", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("fhirwall-{}.upgrade.sock", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let health: Arc<dyn HealthSource> = Arc::new(Health {
        runtime: runtime.clone(),
        auth: auth.clone(),
        audit: audit.clone(),
        propagation: propagation.clone(),
    });
    let limiter = runtime.load().limiter.clone();
    let gateway = Gateway::new(runtime, auth.clone(), audit, metrics.clone());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "fhirwall proxy",
    );
    for addr in &config.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "audit writer",
        // Keeps writing through the shutdown grace period, so requests that finish while
        // draining are still recorded (records reach the file within `flush_interval`).
        Task::new(async move { audit_writer.run().await }).outliving_shutdown(),
    ));
    server.add_service(background_service(
        "rate limits",
        // Prunes idle keys; connects to and probes Redis when configured.
        Task::new(async move { limiter.run().await }),
    ));
    if let Some(propagation) = propagation {
        server.add_service(background_service(
            "revocation pubsub",
            // Subscribes, re-syncs and applies revocations from the other instances;
            // reconnects with a backoff whenever Redis goes away.
            Task::new(async move { propagation.run().await }),
        ));
    }
    server.add_service(background_service(
        "jwks refresh",
        Task::new(async move { auth.run_refresh().await }),
    ));
    let admin_metrics = metrics.clone();
    server.add_service(background_service(
        "admin",
        Task::new(async move {
            let listener = match tokio::net::TcpListener::from_std(admin_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "admin listener unusable");
                    return;
                }
            };
            let served = admin::serve_with_revocation(
                listener,
                admin_metrics,
                health,
                revoke,
                std::future::pending(),
            )
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener stopped");
            }
        }),
    ));
    tracing::info!(
        listen = ?config.listen,
        admin = %config.admin_listen,
        policy.version = config.policy.version(),
        "fhirwall starting"
    );
    server.run_forever()
}

/// Compiles the per-request runtime from a configuration.
pub fn build_runtime(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Runtime> {
    let limiter = Limiter::new(
        config.policy.rate_limits(),
        config.policy.base_path(),
        &config.rate_limit,
        config.forwarding.trust_forwarded_for,
        Some(metrics.clone()),
    )?;
    Ok(Runtime {
        policy: config.policy.clone(),
        upstream: Upstream::new(&config.upstream, &config.forwarding)?,
        realm: config.realm.as_str().into(),
        audit_allow_query: config.audit.allow_query_params.clone(),
        limiter: Arc::new(limiter),
        shadow: config.shadow_policy.clone(),
    })
}

/// The readiness checks behind `/readyz`.
struct Health {
    runtime: Arc<ArcSwap<Runtime>>,
    auth: Arc<Authenticator>,
    audit: AuditSink,
    /// Revocation pub/sub, when Redis is configured.
    propagation: Option<Arc<RedisPropagation>>,
}

impl HealthSource for Health {
    fn readiness(&self) -> Vec<Check> {
        let issuers = self.auth.issuer_status().into_iter().map(|st| Check {
            name: format!("issuer {}", st.issuer),
            ok: st.loaded,
            detail: match (&st.last_error, st.loaded) {
                (None, true) => format!("{} signing keys loaded", st.keys),
                (Some(e), true) => {
                    format!("{} signing keys loaded; last refresh failed: {e}", st.keys)
                }
                (Some(e), false) => format!("no signing keys yet: {e}"),
                (None, false) => "no signing keys yet".to_string(),
            },
        });
        let mut checks = vec![
            Check {
                name: "policy".into(),
                ok: true,
                detail: format!("version {}", self.runtime.load().policy.version()),
            },
            self.audit.readiness_check(),
        ];
        // Degraded but ready: without Redis each instance still limits on its own.
        checks.extend(self.runtime.load().limiter.readiness());
        checks.extend(issuers);
        // Degraded but ready once the first connection was tried: each instance still
        // enforces the revocations it knows.
        checks.extend(self.propagation.as_ref().map(|p| p.readiness()));
        // An open circuit does not fail readiness: every instance shares the provider, so
        // taking them out of rotation would also stop the cached tokens they can still serve.
        checks.extend(
            self.auth
                .introspection_status()
                .into_iter()
                .map(|st| Check {
                    name: format!("introspection {}", st.issuer),
                    ok: true,
                    detail: match &st.last_error {
                        None => format!("circuit {}", st.circuit),
                        Some(e) => format!(
                            "circuit {}, {} failures in a row; last: {e}",
                            st.circuit, st.consecutive_failures
                        ),
                    },
                }),
        );
        checks
    }
}

type BoxTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A one-shot future run as a pingora background service.
struct Task {
    future: Mutex<Option<BoxTask>>,
    /// Stop at the shutdown signal (default), or run until the runtime itself goes away.
    stop_on_shutdown: bool,
}

impl Task {
    fn new(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Task {
            future: Mutex::new(Some(Box::pin(f))),
            stop_on_shutdown: true,
        }
    }

    fn outliving_shutdown(mut self) -> Self {
        self.stop_on_shutdown = false;
        self
    }
}

#[async_trait]
impl BackgroundService for Task {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(task) = self.future.lock().take() else {
            return;
        };
        if !self.stop_on_shutdown {
            return task.await;
        }
        tokio::select! {
            _ = task => {}
            _ = shutdown.changed() => {}
        }
    }
}
