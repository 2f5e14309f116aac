//! Wiring: a validated [`Config`] becomes pingora services — the proxy, the admin listener,
//! the JWKS refresher, the audit writer, the revocation subscriber and the reloader — and
//! runs until a signal stops it.
//!
//! Signals: SIGHUP reloads the configuration and policies ([`crate::reload`]) and makes each
//! TLS listener re-read its certificate files (`tls::ServerCertificate::watch`); pingora's own
//! handling does the rest: SIGTERM drains in-flight requests for `shutdown_grace`
//! (graceful), SIGINT stops at once, SIGQUIT hands the listeners to a new process started
//! with `serve --upgrade` on the same `upgrade_sock`, then drains.

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
use crate::proxy::{Gateway, Runtime};
use crate::reload::Reloader;

/// How the process starts, beyond its configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Take the listening sockets over from a running fhirwall (the one that receives
    /// SIGQUIT next) through `upgrade_sock`, instead of binding them.
    pub upgrade: bool,
}

/// Runs the gateway until it is stopped. Returns only on a startup error; once serving,
/// pingora ends the process itself.
pub fn run(config: Config) -> anyhow::Result<()> {
    run_with(config, RunOptions::default())
}

/// [`run`], with process options (`serve --upgrade`).
pub fn run_with(config: Config, options: RunOptions) -> anyhow::Result<()> {
    if options.upgrade && config.upgrade_sock.is_none() {
        anyhow::bail!("`--upgrade` needs `upgrade_sock` in the configuration (the same path as the running process)");
    }
    let metrics = Arc::new(Metrics::new());
    let runtime = Arc::new(ArcSwap::from_pointee(build_runtime(&config, &metrics)?));
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
    let admin_listener = bind_admin(config.admin_listen)
        .with_context(|| format!("binding the admin listener on {}", config.admin_listen))?;

    // pingora counts the grace period in whole seconds (at least one, by the config check).
    let grace = config.shutdown_grace.as_secs().max(1);
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace),
        // pingora's own pid file defaults to a /tmp path; keep it per process so several
        // gateways (and tests) can run side by side.
        pid_file: std::env::temp_dir()
            .join(format!("fhirwall-{}.pid", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        // The old and the new process of an upgrade meet at `upgrade_sock`; without it the
        // path is per process, so no other process can take the listeners.
        upgrade_sock: match &config.upgrade_sock {
            Some(path) => path.to_string_lossy().into_owned(),
            None => std::env::temp_dir()
                .join(format!("fhirwall-{}.upgrade.sock", std::process::id()))
                .to_string_lossy()
                .into_owned(),
        },
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: options.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // With `upgrade`, this waits (up to 5 s) for the old process to send its listeners.
    server.bootstrap();

    let listeners = config.listeners.clone();
    let upstream_config = config.upstream.clone();
    let admin_listen = config.admin_listen;
    let policy_version = config.policy.version().to_owned();
    let reloader = Arc::new(Reloader::new(config, runtime.clone(), metrics.clone()));
    let health: Arc<dyn HealthSource> = Arc::new(Health {
        runtime: runtime.clone(),
        reloader: reloader.clone(),
        auth: auth.clone(),
        audit: audit.clone(),
        propagation: propagation.clone(),
    });
    let gateway = Gateway::new(runtime, auth.clone(), audit, metrics.clone());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "fhirwall proxy",
    );
    // TLS listeners, and plain ones (loopback or `plaintext: true`) with a warning.
    let certificates = crate::tls::add_listeners(&mut proxy, &listeners, &metrics)?;
    crate::tls::warn_about_upstream_transport(&upstream_config);
    server.add_service(proxy);
    for (cert, interval) in certificates {
        server.add_service(background_service(
            "tls certificate reload",
            // Re-reads the certificate and key files; a change that loads is served from the
            // next handshake on.
            Task::new(cert.watch(interval)),
        ));
    }
    server.add_service(background_service(
        "audit writer",
        // Keeps writing through the shutdown grace period, so requests that finish while
        // draining are still recorded (records reach the file within `flush_interval`).
        Task::new(async move { audit_writer.run().await }).outliving_shutdown(),
    ));
    // SIGHUP ends the process until it is handled; the admin listener (and with it
    // `/readyz`) waits for the handler, so a gateway that reports ready can be reloaded.
    let (signal_ready, mut signal_handled) = tokio::sync::watch::channel(false);
    server.add_service(background_service(
        "reload",
        // Also runs the rate limiter's background work (pruning idle keys, the Redis
        // connection and probe), restarted when a reload rebuilds the limiter.
        Task::new(async move { reloader.run(signal_ready).await }),
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
            let _ = signal_handled.wait_for(|handled| *handled).await;
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
        listen = ?listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
        admin = %admin_listen,
        policy.version = %policy_version,
        upgrade = options.upgrade,
        "fhirwall starting"
    );
    server.run_forever()
}

/// Compiles the per-request runtime from a configuration (see [`crate::reload::build_runtime`]).
pub fn build_runtime(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Runtime> {
    crate::reload::build_runtime(config, metrics, None)
}

/// Binds the admin listener with `SO_REUSEPORT`, so that during an upgrade the new process
/// binds it while the old one still serves it (the kernel spreads connections over both
/// until the old one exits).
fn bind_admin(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The readiness checks behind `/readyz`.
struct Health {
    runtime: Arc<ArcSwap<Runtime>>,
    /// The active policy versions and the last reload.
    reloader: Arc<Reloader>,
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
        let mut checks = vec![self.reloader.policy_check(), self.audit.readiness_check()];
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
