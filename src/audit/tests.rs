//! Tests of the sink and the writer, through an in-memory target that can be made to fail.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::output::MakeWriter;
use super::writer::Tuning;
use super::*;

/// Generous bound for anything asynchronous to happen; tests never assert it is fast.
const PATIENCE: Duration = Duration::from_secs(10);

fn record(i: usize) -> AuditRecord {
    AuditRecord {
        time: "2024-01-01T00:00:00.000Z".to_owned(),
        request_id: format!("req-{i}"),
        client_addr: Some("127.0.0.1:5555".to_owned()),
        user_agent: None,
        method: "GET".to_owned(),
        path: format!("/Patient/{i}"),
        query: None,
        route: Some("patient-read".to_owned()),
        decision: "allow",
        reason: "allowed",
        detail: None,
        required_scopes: None,
        granted_scopes: Some(vec!["patient/Patient.rs".to_owned()]),
        issuer: None,
        client_id: None,
        subject: None,
        fhir_user: None,
        patient: Some(i.to_string()),
        jti: None,
        status: 200,
        upstream_status: Some(200),
        latency_ms: 1.5,
        upstream_latency_ms: Some(1.0),
        bytes_in: 0,
        bytes_out: 42,
        policy_version: "abc".to_owned(),
        rate_limit: None,
    }
}

fn config(target: AuditTarget, capacity: usize, flush: Duration) -> AuditConfig {
    AuditConfig {
        target,
        queue_capacity: capacity,
        flush_interval: flush,
        allow_query_params: Vec::new(),
    }
}

fn fast_tuning() -> Tuning {
    Tuning {
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..Tuning::default()
    }
}

/// An in-memory target whose writes can be made to fail (ENOSPC) or to stop short.
#[derive(Clone, Default)]
struct Memory {
    state: Arc<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    bytes: Mutex<Vec<u8>>,
    fail: AtomicBool,
    /// Accept only this many bytes on the next write, then start failing.
    short_write: Mutex<Option<usize>>,
    writes: AtomicUsize,
    opens: AtomicUsize,
}

struct MemoryWriter(Arc<MemoryState>);

impl Memory {
    fn sink(
        &self,
        capacity: usize,
        flush: Duration,
        tuning: Tuning,
    ) -> (AuditSink, AuditWriter, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let cfg = config(AuditTarget::Stdout, capacity, flush);
        let (sink, writer) =
            AuditSink::with_target(&cfg, metrics.clone(), Box::new(self.clone()), tuning);
        (sink, writer, metrics)
    }

    fn request_ids(&self) -> Vec<String> {
        lines_to_ids(&self.state.bytes.lock())
    }

    fn fail(&self, on: bool) {
        self.state.fail.store(on, Ordering::SeqCst);
    }
}

impl MakeWriter for Memory {
    fn make_writer(&mut self) -> io::Result<Box<dyn Write + Send>> {
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemoryWriter(self.state.clone())))
    }

    fn describe(&self) -> &str {
        "memory"
    }
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.writes.fetch_add(1, Ordering::SeqCst);
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        if let Some(limit) = self.0.short_write.lock().take() {
            let n = limit.min(buf.len());
            self.0.bytes.lock().extend_from_slice(&buf[..n]);
            self.0.fail.store(true, Ordering::SeqCst);
            return Ok(n);
        }
        self.0.bytes.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Parses JSON lines (every line must be complete and valid) into their request ids.
fn lines_to_ids(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    if !text.is_empty() {
        assert!(text.ends_with('\n'), "trailing partial line in {text:?}");
    }
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
            v["request_id"].as_str().expect("request_id").to_owned()
        })
        .collect()
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("req-{i}")).collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn join(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("writer returns")
        .expect("writer does not panic");
}

#[tokio::test]
async fn records_are_written_to_the_file_as_json_lines_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let metrics = Arc::new(Metrics::new());
    let cfg = config(
        AuditTarget::File(path.clone()),
        1000,
        Duration::from_millis(10),
    );
    let (sink, writer) = AuditSink::open(&cfg, metrics.clone()).unwrap();
    let task = tokio::spawn(writer.run());
    for i in 0..50 {
        sink.submit(record(i)).unwrap();
    }
    drop(sink);
    join(task).await;

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(lines_to_ids(&bytes), ids(0..50));
    let first: serde_json::Value =
        serde_json::from_str(std::str::from_utf8(&bytes).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["patient"], "0");
    assert_eq!(metrics.audit_records.get(), 50);
    assert_eq!(metrics.audit_queue_depth.get(), 0);
}

#[tokio::test]
async fn the_file_is_appended_to_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"{\"request_id\":\"earlier\"}\n").unwrap();
    let cfg = config(
        AuditTarget::File(path.clone()),
        10,
        Duration::from_millis(10),
    );
    let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
    let task = tokio::spawn(writer.run());
    sink.submit(record(1)).unwrap();
    drop(sink);
    join(task).await;
    assert_eq!(
        lines_to_ids(&std::fs::read(&path).unwrap()),
        vec!["earlier", "req-1"]
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_file_is_created_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let cfg = config(
        AuditTarget::File(path.clone()),
        10,
        Duration::from_millis(10),
    );
    let _halves = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_unopenable_file_is_an_error_from_open_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("missing-dir").join("audit.jsonl");
    let cfg = config(
        AuditTarget::File(path.clone()),
        10,
        Duration::from_millis(10),
    );
    let err = match AuditSink::open(&cfg, Arc::new(Metrics::new())) {
        Ok(_) => panic!("opened a file in a missing directory"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("missing-dir"), "{err}");
}

#[test]
fn a_zero_capacity_queue_is_refused() {
    let cfg = config(AuditTarget::Stdout, 0, Duration::from_millis(10));
    assert!(AuditSink::open(&cfg, Arc::new(Metrics::new())).is_err());
}

#[tokio::test]
async fn a_record_is_written_within_the_flush_interval_without_more_traffic() {
    let memory = Memory::default();
    let (sink, writer, metrics) = memory.sink(100, Duration::from_millis(50), Tuning::default());
    let task = tokio::spawn(writer.run());
    sink.submit(record(7)).unwrap();
    // The sink stays alive and nothing else is submitted: only the interval can flush it.
    eventually("the record to be written", || {
        memory.request_ids() == ids(7..8)
    })
    .await;
    assert_eq!(metrics.audit_records.get(), 1);
    drop(sink);
    join(task).await;
}

#[tokio::test]
async fn records_arriving_within_one_interval_are_written_together() {
    let memory = Memory::default();
    let (sink, writer, _metrics) = memory.sink(100, Duration::from_secs(3600), Tuning::default());
    let task = tokio::spawn(writer.run());
    for i in 0..5 {
        sink.submit(record(i)).unwrap();
    }
    // With an hour-long interval and a small buffer, nothing is due yet.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(memory.request_ids().is_empty());
    drop(sink);
    join(task).await;
    assert_eq!(memory.request_ids(), ids(0..5));
    assert_eq!(
        memory.state.writes.load(Ordering::SeqCst),
        1,
        "one write call for the batch"
    );
}

#[tokio::test]
async fn a_full_buffer_is_written_before_the_interval() {
    let memory = Memory::default();
    let tuning = Tuning {
        high_water: 1024,
        ..Tuning::default()
    };
    let (sink, writer, _metrics) = memory.sink(100, Duration::from_secs(3600), tuning);
    let task = tokio::spawn(writer.run());
    for i in 0..20 {
        sink.submit(record(i)).unwrap();
    }
    eventually("the buffer to be written", || {
        memory.request_ids().len() >= 2
    })
    .await;
    drop(sink);
    join(task).await;
    assert_eq!(memory.request_ids(), ids(0..20));
}

#[tokio::test]
async fn a_full_queue_refuses_records_and_counts_them() {
    let memory = Memory::default();
    // The writer is not running, so nothing leaves the queue.
    let (sink, _writer, metrics) = memory.sink(2, Duration::from_millis(10), Tuning::default());
    sink.submit(record(0)).unwrap();
    sink.submit(record(1)).unwrap();
    assert!(matches!(sink.submit(record(2)), Err(AuditError::QueueFull)));
    assert_eq!(metrics.audit_dropped.get(), 1);
    assert!(!sink.is_healthy());
    assert_eq!(
        sink.health(),
        AuditHealth::QueueNearlyFull {
            depth: 2,
            capacity: 2
        }
    );
}

#[tokio::test]
async fn the_sink_is_unhealthy_from_ninety_percent_full() {
    let memory = Memory::default();
    let (sink, _writer, _metrics) = memory.sink(10, Duration::from_millis(10), Tuning::default());
    for i in 0..8 {
        sink.submit(record(i)).unwrap();
    }
    assert!(sink.is_healthy(), "8 of 10 is below 90 %");
    sink.submit(record(8)).unwrap();
    assert!(!sink.is_healthy(), "9 of 10 is 90 %");
}

#[tokio::test]
async fn a_stopped_writer_makes_the_sink_unhealthy_and_refuse_records() {
    let memory = Memory::default();
    let (sink, writer, metrics) = memory.sink(10, Duration::from_millis(10), Tuning::default());
    assert!(sink.is_healthy());
    drop(writer);
    assert!(!sink.is_healthy());
    assert_eq!(sink.health(), AuditHealth::WriterStopped);
    assert!(matches!(sink.submit(record(0)), Err(AuditError::Closed)));
    assert_eq!(metrics.audit_dropped.get(), 1);
    assert!(!sink.readiness_check().ok);
}

#[tokio::test]
async fn a_failed_write_makes_the_sink_unhealthy_and_loses_nothing_once_it_recovers() {
    let memory = Memory::default();
    let (sink, writer, metrics) = memory.sink(100, Duration::from_millis(5), fast_tuning());
    let task = tokio::spawn(writer.run());

    memory.fail(true);
    for i in 0..3 {
        sink.submit(record(i)).unwrap();
    }
    eventually("the sink to turn unhealthy", || !sink.is_healthy()).await;
    assert!(metrics.audit_write_errors.get() >= 1);
    match sink.health() {
        AuditHealth::WriteFailing { error } => assert!(error.contains("os error 28"), "{error}"),
        other => panic!("unexpected health {other:?}"),
    }
    let check = sink.readiness_check();
    assert!(!check.ok);
    assert!(check.detail.contains("memory"), "{}", check.detail);
    // Records submitted while failing wait in the queue (the proxy would refuse requests now,
    // but records of requests already served still arrive).
    for i in 3..6 {
        sink.submit(record(i)).unwrap();
    }
    eventually("retries to happen", || {
        metrics.audit_write_errors.get() >= 3
    })
    .await;
    assert!(memory.request_ids().is_empty());
    assert!(
        memory.state.opens.load(Ordering::SeqCst) >= 2,
        "the target is reopened after a failure"
    );
    assert!(
        metrics.audit_queue_depth.get() >= 3,
        "queued and held records are counted"
    );

    memory.fail(false);
    eventually("the sink to recover", || {
        sink.is_healthy() && memory.request_ids().len() == 6
    })
    .await;
    assert_eq!(memory.request_ids(), ids(0..6));
    assert_eq!(metrics.audit_records.get(), 6);
    drop(sink);
    join(task).await;
}

#[tokio::test]
async fn a_short_write_is_resumed_without_duplicating_or_cutting_a_line() {
    let memory = Memory::default();
    // The first write stops after 10 bytes, in the middle of the first line, then fails.
    *memory.state.short_write.lock() = Some(10);
    let (sink, writer, _metrics) = memory.sink(100, Duration::from_millis(5), fast_tuning());
    let task = tokio::spawn(writer.run());
    for i in 0..3 {
        sink.submit(record(i)).unwrap();
    }
    eventually("the failure", || !sink.is_healthy()).await;
    memory.fail(false);
    eventually("the recovery", || {
        sink.is_healthy() && memory.request_ids().len() == 3
    })
    .await;
    assert_eq!(memory.request_ids(), ids(0..3));
    drop(sink);
    join(task).await;
}

#[tokio::test]
async fn dropping_every_sink_drains_the_queue_before_the_writer_returns() {
    let memory = Memory::default();
    let (sink, writer, metrics) = memory.sink(1000, Duration::from_secs(3600), Tuning::default());
    let clone = sink.clone();
    for i in 0..200 {
        sink.submit(record(i)).unwrap();
    }
    let task = tokio::spawn(writer.run());
    drop(sink);
    clone.submit(record(200)).unwrap();
    drop(clone);
    join(task).await;
    assert_eq!(memory.request_ids(), ids(0..201));
    assert_eq!(metrics.audit_records.get(), 201);
}

#[tokio::test]
async fn the_flush_handle_waits_until_everything_submitted_is_written() {
    let memory = Memory::default();
    let (sink, writer, _metrics) = memory.sink(100, Duration::from_millis(20), Tuning::default());
    let task = tokio::spawn(writer.run());
    for i in 0..10 {
        sink.submit(record(i)).unwrap();
    }
    let flush = sink.flush_handle();
    let drained = tokio::time::timeout(PATIENCE, flush.drained())
        .await
        .unwrap();
    assert!(drained);
    assert_eq!(memory.request_ids(), ids(0..10));
    drop(sink);
    join(task).await;
    // After the writer stopped, waiting returns at once.
    assert!(flush.drained().await);
}

#[tokio::test]
async fn at_shutdown_a_target_that_keeps_failing_is_given_up_on_after_the_budget() {
    let memory = Memory::default();
    memory.fail(true);
    let tuning = Tuning {
        shutdown_budget: Duration::from_millis(50),
        ..fast_tuning()
    };
    let (sink, writer, metrics) = memory.sink(100, Duration::from_millis(5), tuning);
    let flush = sink.flush_handle();
    let task = tokio::spawn(writer.run());
    sink.submit(record(0)).unwrap();
    drop(sink);
    join(task).await;
    assert!(metrics.audit_write_errors.get() >= 1);
    assert!(!flush.drained().await, "the record was not written");
}
