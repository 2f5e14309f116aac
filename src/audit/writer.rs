//! The writer task: drains the queue in batches, encodes JSON lines into one reusable buffer,
//! and writes the buffer when it is due (flush interval), large, or the sinks are gone.
//!
//! The blocking `write` runs on tokio's blocking pool so a slow target (a full pipe on
//! stdout, a stalled network disk) never stalls a runtime worker that serves requests.
//!
//! With `audit.auditevent_path` set, each record is also encoded as a FHIR R4 AuditEvent
//! (the same mapping as `fhirwall audit export --format auditevent`, [`super::fhir`]) into a
//! second buffer that is written to that file in the same cycle. The cycle succeeds only
//! when both files took their bytes, so a failing AuditEvent file holds the batch, marks the
//! sink unhealthy and is retried exactly like the trail itself: no request is served whose
//! AuditEvent could not be written. Each buffer keeps its own resume offset, so a retry after
//! one file failed neither duplicates nor loses lines in the other.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::chain::{ChainHead, ChainedLine};
use super::checkpoint::Checkpoint;
use super::output::{MakeWriter, SyncWrite};
use super::{Queued, Shared};

/// Knobs that are constants in production and shortened in tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    /// Records taken from the queue per wake-up.
    pub(super) max_batch: usize,
    /// Once the buffer holds this many bytes it is written without waiting for the flush
    /// interval; while it is this large, the writer stops taking records (back-pressure
    /// reaches the queue, and through it `is_healthy`).
    pub(super) high_water: usize,
    /// First retry delay after a failed write; doubles up to `retry_max`.
    pub(super) retry_initial: Duration,
    /// Longest delay between two retries.
    pub(super) retry_max: Duration,
    /// After every sink is dropped, how long a failing target is retried before the
    /// remaining records are given up on (so shutdown cannot hang on a dead disk).
    pub(super) shutdown_budget: Duration,
    /// `batched` durability: after draining the queue, the writer waits this long (at most a
    /// quarter of `flush_interval`) before it takes records again. While it waits it is not
    /// parked on the queue, so a request that queues its record wakes nobody: the writer
    /// runs on its own runtime thread, and waking it per record cost a cross-thread unpark
    /// and two context switches per request (~9 % of the gateway's CPU under load, see
    /// README "Performance"). The flush deadline is shortened by the same amount, so a record
    /// is still written within `flush_interval` of being queued.
    pub(super) gather: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            high_water: 256 * 1024,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            shutdown_budget: Duration::from_secs(30),
            gather: Duration::from_millis(5),
        }
    }
}

/// The writer's state; see the module docs.
pub(super) struct Writer {
    rx: mpsc::Receiver<Queued>,
    /// The last record encoded (the pending buffer ends with it).
    head: ChainHead,
    /// Strict durability: write as soon as anything is pending, fsync, then release the
    /// waiting responses. Records arriving during one write+fsync form the next group.
    strict: bool,
    /// `None` only while a write is in flight on the blocking pool.
    output: Option<Output>,
    /// Records are also encoded as AuditEvents (`audit.auditevent_path` is set).
    events: bool,
    flush_interval: Duration,
    /// The pause after draining the queue (`batched` only; zero in `strict`).
    gather: Duration,
    tuning: Tuning,
    shared: Arc<Shared>,
    _alive: AliveGuard,
}

/// The target and its current writer.
struct Output {
    make: Box<dyn MakeWriter>,
    /// Dropped after a failure so the next attempt reopens the target.
    current: Option<Box<dyn SyncWrite>>,
    checkpoints: Option<Checkpointer>,
    /// The AuditEvent NDJSON file, when configured.
    events: Option<EventFile>,
}

/// The live AuditEvent sink: one FHIR R4 AuditEvent (IHE BALP) per line.
pub(super) struct EventFile {
    path: PathBuf,
    /// Dropped after a failure so the next attempt reopens the file.
    current: Option<File>,
}

/// Why a record could not be turned into an AuditEvent line.
#[derive(Debug, thiserror::Error)]
enum EventError {
    /// The line just encoded is not a chained record (cannot happen; checked anyway).
    #[error(transparent)]
    Line(#[from] super::chain::LineError),
    /// JSON (de)serialization failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Signs the chain head now and then; see [`super::checkpoint`].
pub(super) struct Checkpointer {
    pub(super) key: SigningKey,
    /// `<audit path>.checkpoints`.
    pub(super) path: PathBuf,
    pub(super) every_records: u64,
    pub(super) interval: Duration,
    /// Records written since the last checkpoint.
    pub(super) since: u64,
    pub(super) last: Instant,
}

/// Encoded records not yet (completely) written.
struct Pending {
    buf: Vec<u8>,
    /// Bytes of `buf` already accepted by the target: a partial write is resumed from here,
    /// so a retry neither duplicates nor truncates a line.
    written: usize,
    /// The AuditEvent lines of the records in `buf` (empty without an AuditEvent file).
    events: Vec<u8>,
    /// Bytes of `events` already accepted by the AuditEvent file.
    events_written: usize,
    /// Records encoded in `buf`.
    records: u64,
    /// When the oldest record in `buf` was encoded: it must be written by
    /// `since + flush_interval`.
    since: Option<Instant>,
    /// Responses waiting for records in `buf` to be durable (strict mode).
    waiters: Vec<oneshot::Sender<()>>,
}

/// Retry state after a failed write.
struct Retry {
    attempt: u32,
    delay: Duration,
    at: Instant,
}

/// Marks the writer stopped however it ends (return, panic, or dropped without running).
struct AliveGuard(Arc<Shared>);

// === impl Writer ===

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        rx: mpsc::Receiver<Queued>,
        make: Box<dyn MakeWriter>,
        head: ChainHead,
        strict: bool,
        checkpoints: Option<Checkpointer>,
        events: Option<EventFile>,
        flush_interval: Duration,
        tuning: Tuning,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            rx,
            head,
            strict,
            events: events.is_some(),
            output: Some(Output {
                make,
                current: None,
                checkpoints,
                events,
            }),
            flush_interval,
            gather: gather_pause(strict, flush_interval, tuning.gather),
            tuning,
            _alive: AliveGuard(shared.clone()),
            shared,
        }
    }

    pub(super) async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.tuning.max_batch);
        let mut pending = Pending {
            buf: Vec::with_capacity(self.tuning.high_water + 64 * 1024),
            written: 0,
            events: Vec::new(),
            events_written: 0,
            records: 0,
            since: None,
            waiters: Vec::new(),
        };
        let mut retry: Option<Retry> = None;
        let mut closed_at: Option<Instant> = None;
        // When every sink was seen dropped. While a write is being retried the writer takes
        // no records, so it would never see the queue end (`closed_at`); the shutdown budget
        // runs from here instead, or a dead disk would hang shutdown forever.
        let mut gone_at: Option<Instant> = None;
        // Records are not taken before this (see `Tuning::gather`).
        let mut paused_until: Option<Instant> = None;

        loop {
            self.shared
                .metrics
                .audit_queue_depth
                .set(i64::try_from(self.rx.len() as u64 + pending.records).unwrap_or(i64::MAX));

            if gone_at.is_none() && self.rx.is_closed() {
                gone_at = Some(Instant::now());
            }
            if pending.buf.is_empty() {
                if closed_at.is_some() {
                    break;
                }
            } else if let (Some(gone), Some(_)) = (gone_at.or(closed_at), &retry) {
                if gone.elapsed() >= self.tuning.shutdown_budget {
                    tracing::error!(
                        audit.target = %self.shared.target,
                        audit.lost_records = pending.records + self.rx.len() as u64,
                        "audit writer giving up at shutdown: the target kept failing"
                    );
                    break;
                }
            }

            // Take more records only when the last write worked and the buffer has room:
            // while the target fails, the queue fills and `is_healthy` turns the traffic away
            // instead of this buffer growing without bound.
            let accepting = closed_at.is_none()
                && retry.is_none()
                && pending.buf.len() < self.tuning.high_water;
            if paused_until.is_some_and(|t| t <= Instant::now()) {
                paused_until = None;
            }
            let due = if pending.buf.is_empty() {
                None
            } else if let Some(retry) = &retry {
                Some(retry.at)
            } else if closed_at.is_some() || self.strict {
                Some(Instant::now())
            } else {
                // A record may have waited `gather` in the queue before it was encoded.
                let since = pending.since.unwrap_or_else(Instant::now);
                Some(deadline(
                    since,
                    self.flush_interval.saturating_sub(self.gather),
                ))
            };

            tokio::select! {
                // Writing what is due comes before taking more, so a steady stream of records
                // cannot postpone a flush.
                biased;
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    if !self.write(&mut pending, &mut retry, closed_at.is_some()).await {
                        break;
                    }
                }
                n = self.rx.recv_many(&mut batch, self.tuning.max_batch), if accepting && paused_until.is_none() => {
                    if n == 0 {
                        // Every sink is gone and the queue is empty: write out and stop.
                        closed_at = Some(Instant::now());
                        continue;
                    }
                    self.encode(&mut batch, &mut pending);
                    // The queue is drained: let the next records gather instead of waking the
                    // writer one by one. A full batch means more are waiting: no pause.
                    if n < self.tuning.max_batch && !self.gather.is_zero() {
                        paused_until = Some(Instant::now() + self.gather);
                    }
                    if pending.buf.len() >= self.tuning.high_water
                        && !self.write(&mut pending, &mut retry, false).await
                    {
                        break;
                    }
                }
                () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)), if accepting && paused_until.is_some() => {
                    paused_until = None;
                }
                // Unreachable: with nothing pending the writer is accepting unless closed,
                // and closed with nothing pending broke out above.
                else => break,
            }
        }
        self.shared.metrics.audit_queue_depth.set(0);
        // A last checkpoint covering everything written, so a clean shutdown leaves no
        // unsigned tail. Small and once: fine to do inline.
        if pending.buf.is_empty() {
            if let Some(output) = &mut self.output {
                output.after_write(0, 0, &self.head, true);
            }
        }
    }

    /// Encodes and empties `batch` into the pending buffer.
    fn encode(&mut self, batch: &mut Vec<Queued>, pending: &mut Pending) {
        let mut unencodable = 0u64;
        for (record, waiter) in batch.drain(..) {
            let (before, start) = (self.head, pending.buf.len());
            let appended = self
                .head
                .append(&mut pending.buf, &record)
                .map_err(EventError::from)
                .and_then(|()| {
                    if !self.events {
                        return Ok(());
                    }
                    push_event(&pending.buf[start..], &mut pending.events).inspect_err(|_| {
                        // Fail closed: a record without its AuditEvent is not written at all.
                        pending.buf.truncate(start);
                        self.head = before;
                    })
                });
            match appended {
                Ok(()) => {
                    pending.records += 1;
                    pending.waiters.extend(waiter);
                }
                Err(e) => {
                    // Cannot happen with the record's field types; if it ever does, the
                    // record is dropped (its waiter sees the commit fail) rather than
                    // corrupting the trail; `append` left the buffer and chain as they were.
                    unencodable += 1;
                    self.shared.metrics.audit_dropped.inc();
                    tracing::error!(error = %e, "audit record could not be encoded; dropped");
                }
            }
        }
        if pending.records > 0 && pending.since.is_none() {
            pending.since = Some(Instant::now());
        }
        if unencodable > 0 {
            self.shared
                .progress
                .send_modify(|p| p.settled += unencodable);
        }
    }

    /// Writes the pending buffer (from where the last attempt stopped) and flushes.
    /// Returns false when the writer cannot go on (the runtime is shutting down).
    async fn write(
        &mut self,
        pending: &mut Pending,
        retry: &mut Option<Retry>,
        last: bool,
    ) -> bool {
        let Some(mut output) = self.output.take() else {
            return false;
        };
        let mut buf = std::mem::take(&mut pending.buf);
        let mut written = pending.written;
        let mut events = std::mem::take(&mut pending.events);
        let mut events_written = pending.events_written;
        let (head, records, sync) = (self.head, pending.records, self.strict);
        let joined = tokio::task::spawn_blocking(move || {
            let result = output
                .write_from(&buf, &mut written, sync)
                .and_then(|()| output.write_events(&events, &mut events_written, sync));
            if result.is_ok() {
                output.after_write(buf.len() as u64, records, &head, last);
                buf.clear();
                written = 0;
                events.clear();
                events_written = 0;
            }
            (output, (buf, written), (events, events_written), result)
        })
        .await;
        let (output, (buf, written), (events, events_written), result) = match joined {
            Ok(parts) => parts,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                // The runtime is shutting down under us; the records cannot be written.
                tracing::error!(
                    audit.target = %self.shared.target,
                    audit.lost_records = pending.records,
                    "audit write cancelled by runtime shutdown"
                );
                return false;
            }
        };
        self.output = Some(output);
        pending.buf = buf;
        pending.written = written;
        pending.events = events;
        pending.events_written = events_written;

        match result {
            Ok(()) => {
                let records = pending.records;
                pending.records = 0;
                pending.since = None;
                let metrics = &self.shared.metrics;
                metrics.audit_records.inc_by(records);
                for waiter in pending.waiters.drain(..) {
                    // A waiter whose request went away is fine to ignore.
                    let _ = waiter.send(());
                }
                self.shared.write_ok.store(true, Ordering::Release);
                if let Some(failed) = retry.take() {
                    tracing::info!(
                        audit.target = %self.shared.target,
                        audit.failed_attempts = failed.attempt,
                        "audit writes recovered"
                    );
                }
                self.shared.progress.send_modify(|p| p.settled += records);
            }
            Err(e) => {
                self.shared.metrics.audit_write_errors.inc();
                *self.shared.last_error.lock() = Some(e.to_string());
                self.shared.write_ok.store(false, Ordering::Release);
                let (attempt, delay) = match retry.as_ref() {
                    None => (1, self.tuning.retry_initial),
                    Some(r) => (r.attempt + 1, (r.delay * 2).min(self.tuning.retry_max)),
                };
                // Record contents never go to the operational log: only the target and the
                // OS error.
                tracing::error!(
                    audit.target = %self.shared.target,
                    error = %e,
                    audit.pending_records = pending.records,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "audit write failed; holding records and retrying"
                );
                *retry = Some(Retry {
                    attempt,
                    delay,
                    at: Instant::now() + delay,
                });
            }
        }
        true
    }
}

/// Appends the AuditEvent of the chained `line` (as just encoded, with its newline) to `out`
/// as one NDJSON line. The record goes through the same parse as the export reads it from
/// the file, so the live sink and `audit export --format auditevent` agree line for line.
/// On error `out` is left as it was.
fn push_event(line: &[u8], out: &mut Vec<u8>) -> Result<(), EventError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let record: serde_json::Value = serde_json::from_slice(&ChainedLine::parse(line)?.json())?;
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, &super::fhir::audit_event(&record)) {
        out.truncate(start);
        return Err(e.into());
    }
    out.push(b'\n');
    Ok(())
}

/// Writes `buf[*written..]` to `writer`, advancing `*written` past every accepted byte.
fn write_all_from(writer: &mut dyn Write, buf: &[u8], written: &mut usize) -> io::Result<()> {
    while *written < buf.len() {
        match writer.write(&buf[*written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writer's pause after draining the queue (see [`Tuning::gather`]). Strict commits wait
/// for the writer: no pause there. At most a quarter of the interval, so a short
/// `flush_interval` still writes about as often as configured.
fn gather_pause(strict: bool, flush_interval: Duration, configured: Duration) -> Duration {
    if strict {
        Duration::ZERO
    } else {
        configured.min(flush_interval / 4)
    }
}

/// `since + interval`, saturating for absurd intervals instead of panicking.
fn deadline(since: Instant, interval: Duration) -> Instant {
    since
        .checked_add(interval)
        .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600))
}

// === impl Output ===

impl Output {
    /// Writes `buf[*written..]` and flushes, advancing `*written` past every byte the target
    /// accepted. One `write` call in the normal case; more only after a short write.
    fn write_from(&mut self, buf: &[u8], written: &mut usize, sync: bool) -> io::Result<()> {
        let result = self.try_write_from(buf, written, sync);
        if result.is_err() {
            self.current = None;
        }
        result
    }

    /// After a successful write: checkpoint if one is due (or `last`), then let the target
    /// rotate.
    fn after_write(&mut self, bytes: u64, records: u64, head: &ChainHead, last: bool) {
        if let Some(cp) = &mut self.checkpoints {
            cp.since += records;
            let due = cp.since >= cp.every_records || cp.last.elapsed() >= cp.interval || last;
            if due && cp.since > 0 {
                match cp.write(head) {
                    Ok(()) => {
                        cp.since = 0;
                        cp.last = Instant::now();
                    }
                    Err(e) => tracing::error!(
                        audit.checkpoints = %cp.path.display(),
                        error = %e,
                        "audit checkpoint could not be written; retrying with the next write"
                    ),
                }
            }
        }
        if self.make.after_write(bytes) {
            self.current = None;
        }
    }

    fn try_write_from(&mut self, buf: &[u8], written: &mut usize, sync: bool) -> io::Result<()> {
        let writer = match &mut self.current {
            Some(writer) => writer,
            None => self.current.insert(self.make.make_writer()?),
        };
        write_all_from(&mut **writer, buf, written)?;
        writer.flush()?;
        if sync {
            writer.sync()?;
        }
        Ok(())
    }
}

impl Output {
    /// Writes `events[*written..]` to the AuditEvent file (if any), fsyncing in strict mode.
    fn write_events(&mut self, events: &[u8], written: &mut usize, sync: bool) -> io::Result<()> {
        match &mut self.events {
            Some(file) if !events.is_empty() => file.write_from(events, written, sync),
            _ => Ok(()),
        }
    }
}

// === impl EventFile ===

impl EventFile {
    /// Opens `path` for append (owner-only when created); an unwritable file is a startup
    /// error, like the trail's own file.
    pub(super) fn open(path: PathBuf) -> io::Result<Self> {
        let file = super::output::open_append(&path).map_err(|e| event_error(&path, e))?;
        Ok(Self {
            path,
            current: Some(file),
        })
    }

    fn write_from(&mut self, buf: &[u8], written: &mut usize, sync: bool) -> io::Result<()> {
        let result = self.try_write_from(buf, written, sync);
        if result.is_err() {
            self.current = None;
        }
        result.map_err(|e| event_error(&self.path, e))
    }

    fn try_write_from(&mut self, buf: &[u8], written: &mut usize, sync: bool) -> io::Result<()> {
        let file = match &mut self.current {
            Some(file) => file,
            None => self.current.insert(super::output::open_append(&self.path)?),
        };
        write_all_from(file, buf, written)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// Names the AuditEvent file in its errors: `/readyz` and the log otherwise only name the
/// trail's target.
fn event_error(path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("AuditEvent file {}: {e}", path.display()))
}

// === impl Checkpointer ===

impl Checkpointer {
    /// Appends a signed checkpoint of `head` and makes it durable.
    fn write(&self, head: &ChainHead) -> io::Result<()> {
        let cp = Checkpoint::sign(&self.key, head, SystemTime::now());
        let mut line = serde_json::to_vec(&cp).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = super::output::open_append(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

// === impl AliveGuard ===

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
        self.0.progress.send_modify(|p| p.stopped = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_durability_never_pauses_and_batched_pauses_at_most_a_quarter_interval() {
        let five = Duration::from_millis(5);
        assert_eq!(
            gather_pause(true, Duration::from_secs(1), five),
            Duration::ZERO
        );
        assert_eq!(gather_pause(false, Duration::from_millis(100), five), five);
        assert_eq!(
            gather_pause(false, Duration::from_millis(8), five),
            Duration::from_millis(2)
        );
    }
}
