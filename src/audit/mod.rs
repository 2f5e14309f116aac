//! The audit trail: one record per request, allowed or denied, written off the request path.
//!
//! (Sink stub: implemented by the audit work.)

mod record;

pub use record::{redact_query, AuditRecord};

use std::sync::Arc;

use crate::config::AuditConfig;
use crate::metrics::Metrics;

/// Why a record could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The queue is full (the writer is behind or stuck).
    #[error("audit queue is full")]
    QueueFull,
    /// The writer has stopped.
    #[error("audit writer has stopped")]
    Closed,
}

/// The request side of the audit trail: cheap to clone, never blocks.
#[derive(Clone)]
pub struct AuditSink {}

/// The writer side: owns the file, runs as a background task.
pub struct AuditWriter {}

impl AuditSink {
    /// Opens the target (an unwritable file is a startup error) and returns the two halves.
    pub fn open(
        cfg: &AuditConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(AuditSink, AuditWriter)> {
        let _ = (cfg, metrics);
        todo!()
    }

    /// True when the writer is running, its last write succeeded, and the queue has room.
    pub fn is_healthy(&self) -> bool {
        todo!()
    }

    /// Queues a record without waiting.
    pub fn submit(&self, record: AuditRecord) -> Result<(), AuditError> {
        let _ = record;
        todo!()
    }
}

impl AuditWriter {
    /// Writes queued records in batches until every sink handle is dropped.
    pub async fn run(self) {
        todo!()
    }
}
