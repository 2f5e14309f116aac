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

pub(super) fn record(i: usize) -> AuditRecord {
    AuditRecord {
        time: "2024-01-01T00:00:00.000Z".to_owned(),
        request_id: format!("req-{i}"),
        client_addr: Some("127.0.0.1:5555".to_owned()),
        user_agent: None,
        method: "GET".to_owned(),
        path: format!("/Patient/{i}"),
        query: None,
        interaction: Some("read"),
        resource_type: Some("Patient"),
        resource_id: Some(i.to_string()),
        route: Some("patient-read".into()),
        decision: "allow",
        reason: "allowed",
        detail: None,
        required_scopes: None,
        granted_scopes: Some(vec!["patient/Patient.rs".to_owned()].into()),
        issuer: None,
        client_id: None,
        subject: None,
        fhir_user: None,
        patient: Some(i.to_string().into()),
        patients: Vec::new(),
        jti: None,
        status: 200,
        upstream_status: Some(200),
        latency_ms: 1.5,
        upstream_latency_ms: Some(1.0),
        bytes_in: 0,
        bytes_out: 42,
        policy_version: "abc".into(),
        rate_limit: None,
        explanation: Default::default(),
    }
}

fn config(target: AuditTarget, capacity: usize, flush: Duration) -> AuditConfig {
    AuditConfig {
        target,
        queue_capacity: capacity,
        flush_interval: flush,
        allow_query_params: Vec::new(),
        durability: crate::config::AuditDurability::Batched,
        rotate_bytes: None,
        rotate_interval: None,
        checkpoint: None,
        auditevent_path: None,
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
    fn make_writer(&mut self) -> io::Result<Box<dyn super::output::SyncWrite>> {
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemoryWriter(self.state.clone())))
    }

    fn describe(&self) -> &str {
        "memory"
    }
}

impl super::output::SyncWrite for MemoryWriter {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
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
    let cfg = config(
        AuditTarget::File(path.clone()),
        10,
        Duration::from_millis(10),
    );
    for i in 0..2 {
        let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        sink.submit(record(i)).unwrap();
        drop(sink);
        join(task).await;
    }
    assert_eq!(
        lines_to_ids(&std::fs::read(&path).unwrap()),
        vec!["req-0", "req-1"]
    );
}

#[test]
fn a_file_whose_last_line_is_not_chained_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"{\"request_id\":\"earlier\"}\n").unwrap();
    let cfg = config(
        AuditTarget::File(path.clone()),
        10,
        Duration::from_millis(10),
    );
    let err = AuditSink::open(&cfg, Arc::new(Metrics::new()))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("not a chained audit record"),
        "{err}"
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

#[cfg(unix)]
#[test]
fn a_device_or_pipe_as_the_audit_file_is_refused_at_start() {
    // `/dev/full` used to hang the start: resuming the chain read its endless zeros.
    let cfg = config(
        AuditTarget::File("/dev/full".into()),
        10,
        Duration::from_millis(10),
    );
    let err = match AuditSink::open(&cfg, Arc::new(Metrics::new())) {
        Ok(_) => panic!("a character device must not be accepted as the audit file"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not a regular file"), "{err}");
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
    // The counter moves just after the write lands: wait for both, not one then the other.
    eventually("the record to be written and counted", || {
        memory.request_ids() == ids(7..8) && metrics.audit_records.get() == 1
    })
    .await;
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
        sink.is_healthy() && metrics.audit_records.get() == 6
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

// --- hash chain, rotation, checkpoints, verify ---

mod chained {
    use std::path::{Path, PathBuf};

    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::audit::chain::ChainedLine;
    use crate::audit::verify::{verify, BreakKind, Options, Report};
    use crate::config::{AuditCheckpointConfig, AuditDurability};

    /// A file-backed trail in a temporary directory.
    struct Trail {
        dir: tempfile::TempDir,
        /// Holds the signing key, away from the audit files.
        keys: tempfile::TempDir,
        path: PathBuf,
        key: Option<SigningKey>,
    }

    impl Trail {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            Trail {
                dir,
                keys: tempfile::tempdir().unwrap(),
                path,
                key: None,
            }
        }

        fn with_checkpoints() -> Self {
            let mut t = Self::new();
            let key = SigningKey::from_bytes(&[3; 32]);
            let pem = key.to_pkcs8_pem(Default::default()).unwrap();
            std::fs::write(t.keys.path().join("cp.key"), pem.as_bytes()).unwrap();
            t.key = Some(key);
            t
        }

        fn config(&self, rotate_bytes: Option<u64>) -> AuditConfig {
            AuditConfig {
                rotate_bytes,
                checkpoint: self.key.as_ref().map(|_| AuditCheckpointConfig {
                    key_file: self.keys.path().join("cp.key"),
                    every_records: 10,
                    interval: Duration::from_secs(3600),
                }),
                ..config(
                    AuditTarget::File(self.path.clone()),
                    1000,
                    Duration::from_millis(5),
                )
            }
        }

        /// Runs a writer over records `range`, one write per record so rotation and
        /// checkpoints happen between records, then shuts it down.
        async fn write(&self, range: std::ops::Range<usize>, rotate_bytes: Option<u64>) {
            let (sink, writer) =
                AuditSink::open(&self.config(rotate_bytes), Arc::new(Metrics::new())).unwrap();
            let task = tokio::spawn(writer.run());
            let flush = sink.flush_handle();
            for i in range {
                sink.submit(record(i)).unwrap();
                assert!(flush.drained().await);
            }
            drop(sink);
            join(task).await;
        }

        fn files(&self) -> Vec<PathBuf> {
            let mut v = super::super::output::rotated_files(&self.path).unwrap();
            v.push(self.path.clone());
            v
        }

        fn verify(&self) -> Report {
            let opts = match &self.key {
                Some(k) => Options {
                    checkpoints: Some((self.checkpoint_file(), k.verifying_key())),
                },
                None => Options::default(),
            };
            verify(&[self.dir.path().to_owned()], &opts).unwrap()
        }

        fn checkpoint_file(&self) -> PathBuf {
            let mut p = self.path.as_os_str().to_owned();
            p.push(".checkpoints");
            p.into()
        }

        /// Rewrites the active file's lines through `f`.
        fn tamper(&self, f: impl FnOnce(&mut Vec<String>)) {
            tamper_file(&self.path, f)
        }
    }

    fn tamper_file(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        f(&mut lines);
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(path, out).unwrap();
    }

    fn broken(report: Report) -> crate::audit::verify::Break {
        match report {
            Report::Broken(b) => b,
            Report::Intact { .. } => panic!("expected a break, got {report}"),
        }
    }

    /// Re-chains lines from `from` on (recomputing every hash), as an attacker who can
    /// write the file but has no signing key would.
    fn rechain(lines: &mut [String], from: usize) {
        let mut prev = if from == 0 {
            crate::audit::chain::GENESIS
        } else {
            ChainedLine::parse(lines[from - 1].as_bytes()).unwrap().hash
        };
        for line in &mut lines[from..] {
            let parsed = ChainedLine::parse(line.as_bytes()).unwrap();
            let seq = parsed.seq;
            let fields = std::str::from_utf8(
                &parsed.body
                    [parsed.body.iter().position(|b| *b == b',').unwrap() + 1 + 9 + 64 + 2..],
            )
            .unwrap()
            .to_owned();
            let body = format!(
                "{{\"seq\":{seq},\"prev\":\"{}\",{fields}",
                crate::audit::chain::hex(&prev)
            );
            let hash = crate::audit::chain::line_hash(&prev, body.as_bytes());
            *line = format!("{body},\"hash\":\"{}\"}}", crate::audit::chain::hex(&hash));
            prev = hash;
        }
    }

    /// Record `i`: patient `i % 3`, on day `i + 1` of January 2024.
    fn dated(i: usize) -> AuditRecord {
        AuditRecord {
            time: format!("2024-01-{:02}T12:00:00.000Z", i + 1),
            patient: Some((i % 3).to_string().into()),
            client_id: Some(format!("client-{}", i % 2).into()),
            ..record(i)
        }
    }

    fn run_query(
        t: &Trail,
        filter: &crate::audit::query::Filter,
    ) -> (Vec<String>, crate::audit::query::Stats) {
        let mut ids = Vec::new();
        let stats = crate::audit::query::query(&[t.dir.path().to_owned()], filter, |v| {
            ids.push(v["request_id"].as_str().unwrap().to_owned());
            Ok(())
        })
        .unwrap();
        (ids, stats)
    }

    #[tokio::test]
    async fn a_query_uses_the_rotation_indexes_and_filters_by_time() {
        use crate::audit::index::Key;
        use crate::audit::query::{parse_time, Filter};
        let t = Trail::new();
        let (sink, writer) =
            AuditSink::open(&t.config(Some(1500)), Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        let flush = sink.flush_handle();
        for i in 0..28 {
            sink.submit(dated(i)).unwrap();
            assert!(flush.drained().await);
        }
        drop(sink);
        join(task).await;
        let rotated = t.files().len() - 1;
        eventually("the rotation indexes", || {
            t.files()[..rotated]
                .iter()
                .all(|f| crate::audit::index::Index::open_fresh(f).unwrap().is_some())
        })
        .await;

        let all = Filter {
            key: Key::Patient,
            value: "1".into(),
            from: None,
            to: None,
        };
        let (ids, stats) = run_query(&t, &all);
        let expected: Vec<String> = (0..28)
            .filter(|i| i % 3 == 1)
            .map(|i| format!("req-{i}"))
            .collect();
        assert_eq!(ids, expected);
        assert_eq!((stats.indexed, stats.scanned), (rotated, 1));

        let ranged = Filter {
            from: Some(parse_time("2024-01-10", false).unwrap()),
            to: Some(parse_time("2024-01-20", true).unwrap()),
            ..all.clone()
        };
        let (ids, stats) = run_query(&t, &ranged);
        // Days 10..=20 are i = 9..=19; patient 1 among them: 10, 13, 16, 19.
        assert_eq!(ids, ["req-10", "req-13", "req-16", "req-19"]);
        assert!(stats.skipped >= 3, "{stats:?}");

        let client = Filter {
            key: Key::Client,
            value: "client-0".into(),
            ..all.clone()
        };
        assert_eq!(run_query(&t, &client).0.len(), 14);
        let nobody = Filter {
            key: Key::Subject,
            value: "nobody".into(),
            ..all
        };
        assert!(run_query(&t, &nobody).0.is_empty());
    }

    #[tokio::test]
    async fn a_patient_named_by_the_request_is_found_like_the_patient_context() {
        use crate::audit::index::Key;
        use crate::audit::query::Filter;
        let t = Trail::new();
        let (sink, writer) =
            AuditSink::open(&t.config(Some(1500)), Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        let flush = sink.flush_handle();
        // A user/ token (no patient context) reading patient 77 every fifth request; the
        // others name patient 5, twice over (path and query), and carry context 5 as well.
        for i in 0..20 {
            let rec = if i % 5 == 0 {
                AuditRecord {
                    patient: None,
                    patients: vec!["77".into()],
                    ..dated(i)
                }
            } else {
                AuditRecord {
                    patient: Some("5".into()),
                    patients: vec!["5".into(), "5".into()],
                    ..dated(i)
                }
            };
            sink.submit(rec).unwrap();
            assert!(flush.drained().await);
        }
        drop(sink);
        join(task).await;
        let rotated = t.files().len() - 1;
        assert!(rotated > 0, "the test needs indexed (rotated) files");
        eventually("the rotation indexes", || {
            t.files()[..rotated]
                .iter()
                .all(|f| crate::audit::index::Index::open_fresh(f).unwrap().is_some())
        })
        .await;
        let named = Filter {
            key: Key::Patient,
            value: "77".into(),
            from: None,
            to: None,
        };
        let (ids, stats) = run_query(&t, &named);
        assert_eq!(ids, ["req-0", "req-5", "req-10", "req-15"]);
        // Every rotated file answered from its index (the active file, if not empty, is read).
        assert_eq!(stats.indexed, rotated, "{stats:?}");
        let context = Filter {
            value: "5".into(),
            ..named
        };
        // Each record once, although it names the patient three times.
        assert_eq!(run_query(&t, &context).0.len(), 16);
    }

    #[tokio::test]
    async fn a_stale_index_is_not_used_and_a_missing_one_is_rebuilt() {
        use crate::audit::index::{index_path, Index, Key};
        let t = Trail::new();
        t.write(0..12, Some(1500)).await;
        let first = t.files()[0].clone();
        eventually("the index", || Index::open_fresh(&first).unwrap().is_some()).await;
        // Appending to a rotated file (it should never change) makes its index stale.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&first)
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        assert!(Index::open_fresh(&first).unwrap().is_none());
        // Indexes are built on a background thread at rotation: wait for the second one too
        // before removing it.
        let second = t.files()[1].clone();
        eventually("the second index", || index_path(&second).exists()).await;
        std::fs::remove_file(index_path(&second)).unwrap();
        let filter = crate::audit::query::Filter {
            key: Key::Patient,
            value: "4".into(),
            from: None,
            to: None,
        };
        let (ids, _) = run_query(&t, &filter);
        assert_eq!(ids, ["req-4"]);
        assert!(
            Index::open_fresh(&t.files()[1]).unwrap().is_some(),
            "rebuilt by the query"
        );
    }

    #[tokio::test]
    async fn an_untouched_trail_verifies_intact() {
        let t = Trail::new();
        t.write(0..20, None).await;
        assert_eq!(
            t.verify(),
            Report::Intact {
                records: 20,
                first_seq: 1,
                last_seq: 20,
                checkpoints: 0
            }
        );
        // Lines are still plain JSON with the record's fields plus seq and hash.
        let text = std::fs::read_to_string(&t.path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().nth(4).unwrap()).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["request_id"].as_str()),
            (Some(5), Some("req-4"))
        );
        assert_eq!(v["hash"].as_str().map(str::len), Some(64));
    }

    #[tokio::test]
    async fn the_chain_resumes_after_a_restart() {
        let t = Trail::new();
        t.write(0..5, None).await;
        t.write(5..9, None).await;
        assert!(matches!(
            t.verify(),
            Report::Intact {
                records: 9,
                last_seq: 9,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn the_chain_continues_across_size_rotation_and_restarts() {
        let t = Trail::new();
        // A record line is ~600 bytes: rotate every ~3 records.
        t.write(0..10, Some(1500)).await;
        t.write(10..20, Some(1500)).await;
        let files = t.files();
        assert!(files.len() >= 5, "rotated into {files:?}");
        // The names sort in chain order, and each file's first record links to the
        // previous file's last.
        let firsts: Vec<u64> = files[..files.len() - 1]
            .iter()
            .map(|f| super::super::output::read_first_seq(f).unwrap().unwrap())
            .collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
        assert_eq!(
            t.verify(),
            Report::Intact {
                records: 20,
                first_seq: 1,
                last_seq: 20,
                checkpoints: 0
            }
        );
        // Removing a whole rotated file in the middle is a gap.
        std::fs::remove_file(&files[1]).unwrap();
        let b = broken(t.verify());
        assert_eq!(b.kind, BreakKind::Deleted);
        assert_eq!(b.file, files[2]);
        assert_eq!(b.line, 1);
    }

    #[tokio::test]
    async fn time_rotation_starts_a_new_file_linked_to_the_last() {
        let t = Trail::new();
        let cfg = AuditConfig {
            rotate_interval: Some(Duration::from_millis(30)),
            ..t.config(None)
        };
        let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        let flush = sink.flush_handle();
        for i in 0..4 {
            sink.submit(record(i)).unwrap();
            assert!(flush.drained().await);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        drop(sink);
        join(task).await;
        assert!(t.files().len() >= 3, "{:?}", t.files());
        assert!(matches!(t.verify(), Report::Intact { records: 4, .. }));
    }

    #[tokio::test]
    async fn an_edited_record_is_named() {
        let t = Trail::new();
        t.write(0..10, None).await;
        t.tamper(|l| l[3] = l[3].replace("\"status\":200", "\"status\":404"));
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Edited, 4, Some(4)));
        assert_eq!(b.file, t.path);
    }

    #[tokio::test]
    async fn an_edited_record_with_a_recomputed_hash_is_named() {
        let t = Trail::new();
        t.write(0..10, None).await;
        t.tamper(|l| {
            l[3] = l[3].replace("req-3", "req-X");
            rechain(&mut l[..4], 3);
        });
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Edited, 4, Some(4)));
    }

    #[tokio::test]
    async fn a_deleted_record_is_named() {
        let t = Trail::new();
        t.write(0..10, None).await;
        t.tamper(|l| {
            l.remove(5);
        });
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Deleted, 6, Some(7)));
        assert!(b.detail.contains("record 6 is missing"), "{}", b.detail);
    }

    #[tokio::test]
    async fn reordered_records_are_named() {
        let t = Trail::new();
        t.write(0..10, None).await;
        t.tamper(|l| l.swap(4, 5));
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Reordered, 5, Some(6)));
    }

    #[tokio::test]
    async fn an_inserted_record_is_named() {
        let t = Trail::new();
        t.write(0..10, None).await;
        // A copy of a real record (valid hash) slipped in, and a forged plain line.
        t.tamper(|l| {
            let copy = l[2].clone();
            l.insert(6, copy);
        });
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Inserted, 7, Some(3)));

        let t = Trail::new();
        t.write(0..10, None).await;
        t.tamper(|l| {
            l.insert(
                2,
                r#"{"time":"2024-01-01T00:00:00.000Z","decision":"allow"}"#.into(),
            )
        });
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line, b.seq), (BreakKind::Inserted, 3, None));
    }

    #[tokio::test]
    async fn a_cut_last_line_is_truncation() {
        let t = Trail::new();
        t.write(0..10, None).await;
        let len = std::fs::metadata(&t.path).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&t.path)
            .unwrap();
        f.set_len(len - 20).unwrap();
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line), (BreakKind::Truncated, 10));
    }

    #[tokio::test]
    async fn a_restart_after_a_torn_write_cuts_the_partial_line_and_continues() {
        let t = Trail::new();
        t.write(0..5, None).await;
        let len = std::fs::metadata(&t.path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&t.path)
            .unwrap()
            .set_len(len - 20)
            .unwrap();
        t.write(5..8, None).await;
        assert!(matches!(
            t.verify(),
            Report::Intact {
                records: 7,
                last_seq: 7,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn checkpoints_verify_and_catch_a_removed_tail() {
        let t = Trail::with_checkpoints();
        t.write(0..25, None).await;
        // Every 10 records, and one at shutdown.
        assert_eq!(
            t.verify(),
            Report::Intact {
                records: 25,
                first_seq: 1,
                last_seq: 25,
                checkpoints: 3
            }
        );
        // Removing whole records at the end keeps the chain consistent; only the
        // checkpoint shows it.
        t.tamper(|l| l.truncate(22));
        let b = broken(t.verify());
        assert_eq!((b.kind, b.seq), (BreakKind::Truncated, Some(22)));
    }

    #[tokio::test]
    async fn checkpoints_catch_a_rewritten_tail() {
        let t = Trail::with_checkpoints();
        t.write(0..25, None).await;
        t.tamper(|l| {
            l[12] = l[12].replace("req-12", "req-X");
            rechain(l, 12);
        });
        // Without checkpoints the rewritten chain is self-consistent...
        let plain = verify(std::slice::from_ref(&t.path), &Options::default()).unwrap();
        assert!(matches!(plain, Report::Intact { .. }), "{plain}");
        // ...with them, the first checkpoint after the edit names it.
        let b = broken(t.verify());
        assert_eq!((b.kind, b.seq), (BreakKind::Edited, Some(20)));
    }

    #[tokio::test]
    async fn a_forged_checkpoint_is_refused() {
        let t = Trail::with_checkpoints();
        t.write(0..12, None).await;
        tamper_file(&t.checkpoint_file(), |l| {
            l[0] = l[0].replace("\"seq\":10", "\"seq\":11")
        });
        let b = broken(t.verify());
        assert_eq!((b.kind, b.line), (BreakKind::BadCheckpoint, 1));
    }

    #[tokio::test]
    async fn strict_commits_resolve_once_the_record_is_on_disk() {
        let t = Trail::new();
        let cfg = AuditConfig {
            durability: AuditDurability::Strict,
            flush_interval: Duration::from_secs(3600),
            ..t.config(None)
        };
        let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        let commits: Vec<_> = (0..20)
            .map(|i| sink.submit_committed(record(i)).unwrap())
            .collect();
        for (i, c) in commits.into_iter().enumerate() {
            assert!(tokio::time::timeout(PATIENCE, c.committed()).await.unwrap());
            // Despite the hour-long flush interval, the record is already in the file.
            let text = std::fs::read_to_string(&t.path).unwrap();
            assert!(text.contains(&format!("\"req-{i}\"")));
        }
        drop(sink);
        join(task).await;
        assert!(matches!(t.verify(), Report::Intact { records: 20, .. }));
    }
}

/// The live AuditEvent sink (`audit.auditevent_path`).
mod auditevent_sink {
    use super::*;
    use crate::audit::chain::ChainedLine;
    use crate::audit::writer::EventFile;
    use crate::config::AuditDurability;

    /// Records whose AuditEvents differ: reads, a search, a refusal, an upstream failure.
    fn varied(i: usize) -> AuditRecord {
        let mut r = record(i);
        match i % 4 {
            1 => {
                r.path = "/Observation".to_owned();
                r.query = Some("patient=REDACTED&_count=10".to_owned());
            }
            2 => {
                r.decision = "deny";
                r.reason = "insufficient_scope";
                r.status = 403;
                r.upstream_status = None;
            }
            3 => {
                r.method = "POST".to_owned();
                r.path = "/Observation".to_owned();
                r.status = 502;
            }
            _ => {}
        }
        r
    }

    /// The export mapping applied to every record of the trail file.
    fn exported(trail: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read(trail)
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let line = ChainedLine::parse(l).expect("chained line");
                let rec: serde_json::Value = serde_json::from_slice(&line.json()).unwrap();
                crate::audit::fhir::audit_event(&rec)
            })
            .collect()
    }

    fn sink_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "partial line");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each AuditEvent line is JSON"))
            .collect()
    }

    #[tokio::test]
    async fn each_record_is_also_written_as_the_auditevent_the_export_maps_it_to() {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("audit.jsonl");
        let events = dir.path().join("auditevents.ndjson");
        let cfg = AuditConfig {
            auditevent_path: Some(events.clone()),
            ..config(
                AuditTarget::File(trail.clone()),
                1000,
                Duration::from_millis(5),
            )
        };
        let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        let flush = sink.flush_handle();
        for i in 0..20 {
            sink.submit(varied(i)).unwrap();
        }
        assert!(flush.drained().await);
        // Written in the same cycle: once the records are settled, so are their events.
        assert_eq!(sink_lines(&events).len(), 20);
        for i in 20..40 {
            sink.submit(varied(i)).unwrap();
        }
        drop(sink);
        join(task).await;

        let written = sink_lines(&events);
        assert_eq!(written.len(), 40);
        assert_eq!(written, exported(&trail));
        for (i, ev) in written.iter().enumerate() {
            assert_eq!(ev["resourceType"], "AuditEvent");
            assert_eq!(ev["id"], format!("fw-{}", i + 1));
        }
        let outcomes: Vec<_> = written[..4].iter().map(|e| e["outcome"].clone()).collect();
        assert_eq!(outcomes, ["0", "0", "4", "8"]);
    }

    #[tokio::test]
    async fn a_strict_commit_resolves_only_once_its_auditevent_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("audit.jsonl");
        let events = dir.path().join("auditevents.ndjson");
        let cfg = AuditConfig {
            auditevent_path: Some(events.clone()),
            durability: AuditDurability::Strict,
            ..config(
                AuditTarget::File(trail.clone()),
                1000,
                Duration::from_secs(3600),
            )
        };
        let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
        let task = tokio::spawn(writer.run());
        for i in 0..5 {
            let commit = sink.submit_committed(varied(i)).unwrap();
            assert!(tokio::time::timeout(PATIENCE, commit.committed())
                .await
                .unwrap());
            assert_eq!(sink_lines(&events).len(), i + 1);
        }
        drop(sink);
        join(task).await;
        assert_eq!(sink_lines(&events), exported(&trail));
    }

    #[tokio::test]
    async fn an_unwritable_auditevent_path_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            auditevent_path: Some(dir.path().join("missing-dir/ae.ndjson")),
            ..config(
                AuditTarget::File(dir.path().join("audit.jsonl")),
                10,
                Duration::from_millis(5),
            )
        };
        let err = AuditSink::open(&cfg, Arc::new(Metrics::new()))
            .err()
            .expect("open fails");
        assert!(err.to_string().contains("AuditEvent file"), "{err}");
    }

    /// `/dev/full` opens fine and refuses every write with ENOSPC.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failing_auditevent_file_makes_the_sink_unhealthy_and_holds_the_batch() {
        let mem = Memory::default();
        let metrics = Arc::new(Metrics::new());
        let cfg = config(AuditTarget::Stdout, 100, Duration::from_millis(5));
        let events = EventFile::open("/dev/full".into()).unwrap();
        let tuning = Tuning {
            shutdown_budget: Duration::from_millis(100),
            ..fast_tuning()
        };
        let (sink, writer) = AuditSink::with_parts(
            &cfg,
            metrics.clone(),
            Box::new(mem.clone()),
            None,
            Some(events),
            tuning,
        )
        .unwrap();
        let task = tokio::spawn(writer.run());
        for i in 0..5 {
            sink.submit(record(i)).unwrap();
        }
        eventually("the AuditEvent failure to show", || {
            metrics.audit_write_errors.get() >= 3
        })
        .await;
        match sink.health() {
            AuditHealth::WriteFailing { error } => {
                assert!(error.contains("AuditEvent file /dev/full"), "{error}")
            }
            other => panic!("expected WriteFailing, got {other:?}"),
        }
        assert!(!sink.is_healthy());
        // The trail took its lines once; the retries resume the AuditEvent file only.
        assert_eq!(mem.request_ids(), ids(0..5));
        assert_eq!(
            metrics.audit_records.get(),
            0,
            "records never counted as written"
        );
        drop(sink);
        join(task).await;
        assert_eq!(mem.request_ids(), ids(0..5));
    }
}
