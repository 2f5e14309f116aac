//! The audit trail: one record per request, allowed or denied, written off the request path.
//!
//! [`AuditSink::open`] returns two halves. The [`AuditSink`] is what the proxy holds: cheap to
//! clone, and [`AuditSink::submit`] never blocks or awaits (a bounded queue; when it is full the
//! record is refused and counted, and [`AuditSink::is_healthy`] has already turned false so the
//! proxy refuses new requests: fhirwall never serves unaudited traffic). The [`AuditWriter`] is
//! a background task that drains the queue in batches, serializes each record as one JSON line
//! into a reusable buffer, and hands the buffer to the target in one write, at the latest
//! `flush_interval` after the oldest record in it arrived.
//!
//! A failed write keeps the buffer (nothing is lost), marks the sink unhealthy, and is retried
//! with backoff, reopening the target; the sink turns healthy again after the first successful
//! write. When every [`AuditSink`] clone is dropped the writer writes out everything still
//! queued and returns, so shutdown is: drop the sinks, await the writer task.

mod output;
mod record;
mod writer;

pub use record::{redact_query, AuditRecord, RateLimitNote};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::admin::Check;
use crate::config::{AuditConfig, AuditTarget};
use crate::metrics::Metrics;

use output::{FileTarget, MakeWriter, StdoutTarget};
use writer::Tuning;

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
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    shared: Arc<Shared>,
}

/// The writer side: owns the file, runs as a background task.
pub struct AuditWriter {
    inner: writer::Writer,
}

/// Waits for the writer to catch up; see [`AuditSink::flush_handle`].
///
/// Holding one does not keep the writer running: the writer still stops once every
/// [`AuditSink`] is dropped.
#[derive(Clone)]
pub struct AuditFlush {
    shared: Arc<Shared>,
}

/// The state of the audit trail, as [`AuditSink::health`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditHealth {
    /// Writing normally, with room in the queue.
    Healthy,
    /// The writer task has ended (or was never started and has been dropped).
    WriterStopped,
    /// The last write failed; the writer is retrying with the failed batch held in memory.
    WriteFailing {
        /// The error of the last failed write (an OS error; never record contents).
        error: String,
    },
    /// The queue is at least 90 % full: the writer is not keeping up.
    QueueNearlyFull {
        /// Records waiting in the queue.
        depth: usize,
        /// Queue capacity.
        capacity: usize,
    },
}

/// State shared by the sink handles, the flush handles and the writer.
struct Shared {
    metrics: Arc<Metrics>,
    /// Where records go, for operator messages (`stdout` or the file path).
    target: String,
    /// False from the first failed write until the next successful one.
    write_ok: AtomicBool,
    /// False once the writer has returned, panicked, or been dropped.
    writer_alive: AtomicBool,
    /// The last write error, for `/readyz` details. Only touched when a write fails or
    /// readiness is asked for, never on the request path.
    last_error: Mutex<Option<String>>,
    /// Records accepted by [`AuditSink::submit`] (monotonic).
    accepted: AtomicU64,
    /// What the writer has finished with, for [`AuditFlush::drained`].
    progress: watch::Sender<Progress>,
}

/// How far the writer has got.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Records written, or given up on because they could not be serialized.
    settled: u64,
    /// The writer has returned.
    stopped: bool,
}

// === impl AuditSink ===

impl AuditSink {
    /// Opens the target (an unwritable file is a startup error) and returns the two halves.
    ///
    /// A file target is opened for append and created with mode 0600 on unix. Spawn
    /// [`AuditWriter::run`] on a tokio runtime; until it runs, records only queue up.
    pub fn open(
        cfg: &AuditConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(AuditSink, AuditWriter)> {
        if cfg.queue_capacity == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "audit queue_capacity must be at least 1",
            ));
        }
        let target: Box<dyn MakeWriter> = match &cfg.target {
            AuditTarget::Stdout => Box::new(StdoutTarget),
            AuditTarget::File(path) => Box::new(FileTarget::open(path)?),
        };
        Ok(Self::with_target(cfg, metrics, target, Tuning::default()))
    }

    /// Builds both halves around an already-open target.
    fn with_target(
        cfg: &AuditConfig,
        metrics: Arc<Metrics>,
        target: Box<dyn MakeWriter>,
        tuning: Tuning,
    ) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let shared = Arc::new(Shared {
            metrics,
            target: target.describe().to_owned(),
            write_ok: AtomicBool::new(true),
            writer_alive: AtomicBool::new(true),
            last_error: Mutex::new(None),
            accepted: AtomicU64::new(0),
            progress: watch::Sender::new(Progress::default()),
        });
        let inner = writer::Writer::new(rx, target, cfg.flush_interval, tuning, shared.clone());
        (AuditSink { tx, shared }, AuditWriter { inner })
    }

    /// True when the writer is running, its last write succeeded, and the queue has room.
    ///
    /// Cheap (a few atomic loads): the proxy calls it on every request and refuses with 503
    /// when it is false, so no request is served that could not be audited.
    pub fn is_healthy(&self) -> bool {
        self.health() == AuditHealth::Healthy
    }

    /// Why the sink is or is not healthy.
    pub fn health(&self) -> AuditHealth {
        let shared = &self.shared;
        if !shared.writer_alive.load(Ordering::Acquire) || self.tx.is_closed() {
            return AuditHealth::WriterStopped;
        }
        if !shared.write_ok.load(Ordering::Acquire) {
            let error = shared
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "write failed".to_owned());
            return AuditHealth::WriteFailing { error };
        }
        let capacity = self.tx.max_capacity();
        let depth = capacity - self.tx.capacity();
        // `capacity - capacity / 10` is ceil(0.9 * capacity): "at least 90 % full" in integers.
        if depth >= capacity - capacity / 10 {
            return AuditHealth::QueueNearlyFull { depth, capacity };
        }
        AuditHealth::Healthy
    }

    /// The `audit` readiness check for `/readyz`.
    pub fn readiness_check(&self) -> Check {
        let detail = match self.health() {
            AuditHealth::Healthy => format!("writing to {}", self.shared.target),
            AuditHealth::WriterStopped => {
                format!("audit writer for {} has stopped", self.shared.target)
            }
            AuditHealth::WriteFailing { error } => {
                format!("writing to {} failed: {error}", self.shared.target)
            }
            AuditHealth::QueueNearlyFull { depth, capacity } => {
                format!("audit queue nearly full ({depth}/{capacity})")
            }
        };
        Check {
            name: "audit".to_owned(),
            ok: self.is_healthy(),
            detail,
        }
    }

    /// Queues a record without waiting.
    ///
    /// On error the record is gone and `fhirwall_audit_dropped_total` counted it; the caller
    /// should treat the request as unaudited (it was refused by [`AuditSink::is_healthy`]
    /// before being served, unless the sink failed in between).
    pub fn submit(&self, record: AuditRecord) -> Result<(), AuditError> {
        let err = match self.tx.try_send(record) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::AcqRel);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(_)) => AuditError::QueueFull,
            Err(mpsc::error::TrySendError::Closed(_)) => AuditError::Closed,
        };
        let metrics = &self.shared.metrics;
        metrics.audit_dropped.inc();
        // Log on a logarithmic schedule (1st, 2nd, 4th, 8th... drop): the operator learns
        // about it at once without one log line per refused request under overload.
        let dropped = metrics.audit_dropped.get();
        if dropped.is_power_of_two() {
            tracing::error!(
                audit.target = %self.shared.target,
                audit.dropped_total = dropped,
                error = %err,
                "audit record dropped"
            );
        }
        Err(err)
    }

    /// A handle that can wait until everything submitted so far has been written.
    pub fn flush_handle(&self) -> AuditFlush {
        AuditFlush {
            shared: self.shared.clone(),
        }
    }
}

// === impl AuditWriter ===

impl AuditWriter {
    /// Writes queued records in batches until every sink handle is dropped.
    ///
    /// Then writes out whatever is still queued and returns. If the target keeps failing at
    /// that point, it retries for a bounded time (30 s) and then gives up with an error log
    /// naming how many records were lost, so shutdown cannot hang forever on a dead disk.
    pub async fn run(self) {
        self.inner.run().await
    }
}

// === impl AuditFlush ===

impl AuditFlush {
    /// Waits until every record accepted before this call has been written, or the writer
    /// has stopped. Returns true when everything was written.
    ///
    /// Wrap it in `tokio::time::timeout` to bound the wait.
    pub async fn drained(&self) -> bool {
        let target = self.shared.accepted.load(Ordering::Acquire);
        let mut progress = self.shared.progress.subscribe();
        let settled = match progress
            .wait_for(|p| p.settled >= target || p.stopped)
            .await
        {
            Ok(p) => p.settled,
            // The sender lives in `Shared`, which we hold: it cannot be dropped.
            Err(_) => 0,
        };
        settled >= target
    }
}

#[cfg(test)]
mod tests;
