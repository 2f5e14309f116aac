//! The admin listener: `/metrics`, `/healthz`, `/readyz`. (Stub: implemented by the audit work.)

use std::sync::Arc;

use crate::metrics::Metrics;

/// One readiness check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked (`policy`, `issuer:<name>`, `audit`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Operator-facing detail.
    pub detail: String,
}

/// Something that can say whether the gateway is ready.
pub trait HealthSource: Send + Sync {
    /// Every readiness check; ready when all pass.
    fn readiness(&self) -> Vec<Check>;
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthSource>,
) -> std::io::Result<()> {
    let _ = (listener, metrics, health);
    todo!()
}
