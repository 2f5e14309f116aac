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

//!
//! Every line is chained to the one before it by a SHA-256 hash ([`chain`]), optionally with
//! signed checkpoints ([`checkpoint`]); [`verify`] checks a set of files. In `strict`
//! durability, [`AuditSink::submit_committed`] returns a [`Commit`] the proxy awaits before
//! releasing the response: the writer writes and fsyncs whatever is queued as one group and
//! then resolves every commit in it.

pub mod chain;
pub mod checkpoint;
pub mod fhir;
pub mod index;
mod output;
pub mod query;
mod record;
pub mod verify;
mod writer;

pub use checkpoint::{load_signing_key, load_verifying_key};
pub use record::{redact_query, AuditRecord, Explanation, RateLimitNote, ScopeList};

/// A record in the queue, with the commit to resolve once it is durable (strict mode).
type Queued = (AuditRecord, Option<tokio::sync::oneshot::Sender<()>>);

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::admin::Check;
use crate::config::{AuditConfig, AuditDurability, AuditTarget};
use crate::metrics::Metrics;

use output::{FileTarget, MakeWriter, Rotation, StdoutTarget};
use writer::{Checkpointer, EventFile, Tuning};

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
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
    strict: bool,
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

/// Resolves when a record submitted with [`AuditSink::submit_committed`] is on disk.
#[must_use = "a commit does nothing unless awaited"]
pub struct Commit {
    rx: tokio::sync::oneshot::Receiver<()>,
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
        let rotation = Rotation {
            bytes: cfg.rotate_bytes,
            interval: cfg.rotate_interval,
        };
        let target: Box<dyn MakeWriter> = match &cfg.target {
            AuditTarget::Stdout => Box::new(StdoutTarget),
            AuditTarget::File(path) => Box::new(FileTarget::open(path, rotation)?),
        };
        let checkpoints = match (&cfg.checkpoint, &cfg.target) {
            (Some(cp), AuditTarget::File(path)) => {
                let key = load_signing_key(&cp.key_file).map_err(std::io::Error::other)?;
                let mut name = path.as_os_str().to_owned();
                name.push(".checkpoints");
                Some(Checkpointer {
                    key,
                    path: name.into(),
                    every_records: cp.every_records,
                    interval: cp.interval,
                    since: 0,
                    last: tokio::time::Instant::now(),
                })
            }
            _ => None,
        };
        let events = cfg
            .auditevent_path
            .clone()
            .map(EventFile::open)
            .transpose()?;
        Self::with_parts(cfg, metrics, target, checkpoints, events, Tuning::default())
    }

    /// Builds both halves around an already-open target, resuming its chain.
    fn with_parts(
        cfg: &AuditConfig,
        metrics: Arc<Metrics>,
        mut target: Box<dyn MakeWriter>,
        checkpoints: Option<Checkpointer>,
        events: Option<EventFile>,
        tuning: Tuning,
    ) -> std::io::Result<(AuditSink, AuditWriter)> {
        let head = target.resume()?;
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
        let strict = cfg.durability == AuditDurability::Strict;
        let inner = writer::Writer::new(
            rx,
            target,
            head,
            strict,
            checkpoints,
            events,
            cfg.flush_interval,
            tuning,
            shared.clone(),
        );
        Ok((AuditSink { tx, shared, strict }, AuditWriter { inner }))
    }

    /// Builds both halves around an in-memory target (tests).
    #[cfg(test)]
    fn with_target(
        cfg: &AuditConfig,
        metrics: Arc<Metrics>,
        target: Box<dyn MakeWriter>,
        tuning: Tuning,
    ) -> (AuditSink, AuditWriter) {
        Self::with_parts(cfg, metrics, target, None, None, tuning).expect("memory target resumes")
    }

    /// True when the writer is running, its last write succeeded, and the queue has room.
    ///
    /// Cheap (a few atomic loads): the proxy calls it on every request and refuses with 503
    /// when it is false, so no request is served that could not be audited.
    pub fn is_healthy(&self) -> bool {
        self.health() == AuditHealth::Healthy
    }

    /// True with `durability: strict`: the proxy must commit each record with
    /// [`AuditSink::submit_committed`] before releasing the response.
    pub fn is_strict(&self) -> bool {
        self.strict
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
        self.enqueue((record, None))
    }

    /// Queues a record without waiting and returns a [`Commit`] that resolves once it is
    /// written and fsynced (with `durability: strict`; with `batched`, once written).
    pub fn submit_committed(&self, record: AuditRecord) -> Result<Commit, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue((record, Some(tx)))?;
        Ok(Commit { rx })
    }

    fn enqueue(&self, queued: Queued) -> Result<(), AuditError> {
        let err = match self.tx.try_send(queued) {
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

// === impl Commit ===

impl Commit {
    /// True once the record is durable; false if the writer dropped it or stopped.
    pub async fn committed(self) -> bool {
        self.rx.await.is_ok()
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

/// RFC 3339 UTC with millisecond precision.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests;
