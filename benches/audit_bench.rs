//! Audit bench: writer throughput in `batched` and `strict` durability, and `audit query`
//! time over many records. Not a test: run it by hand and read the numbers.
//!
//! ```text
//! cargo run --release --example audit_bench -- DIR [RECORDS] [ROTATE_BYTES] [STRICT_RECORDS]
//! ```
//!
//! Writes RECORDS (default 10 000 000) realistic records through the real writer (hash chain,
//! rotation every ROTATE_BYTES, default 64 MiB, sidecar indexes) into DIR, then runs queries
//! by patient, subject and client, with and without a time range, and prints the times.
//! Needs about 500 bytes of disk per record (10 M records: ~5 GB). Then measures `strict`
//! with 64 concurrent committers over STRICT_RECORDS (default 20 000) in `DIR/strict`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirwall::audit::index::{Index, Key};
use fhirwall::audit::query::{query, Filter};
use fhirwall::audit::{AuditError, AuditRecord, AuditSink};
use fhirwall::config::{AuditConfig, AuditDurability, AuditTarget};
use fhirwall::metrics::Metrics;

const PATIENTS: u64 = 1_000_000;
const SUBJECTS: u64 = 10_000;
const CLIENTS: u64 = 50;

fn record(i: u64) -> AuditRecord {
    // A cheap deterministic spread (not random: reruns query the same data).
    let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let patient = mix % PATIENTS;
    let ms = 1_700_000_000_000u64 + i * 3; // ~3 ms apart: 10 M records span ~8 hours
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    AuditRecord {
        time: format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        request_id: format!("{:032x}", u128::from(mix)),
        client_addr: Some("10.1.2.3".into()),
        user_agent: Some("ehr-app/4.2".into()),
        method: "GET".into(),
        path: "/fhir/Observation".into(),
        query: Some("patient=REDACTED&_count=50".into()),
        interaction: Some("search-type"),
        resource_type: Some("Observation"),
        resource_id: None,
        route: Some("observation-search".into()),
        decision: "allow",
        reason: "allowed",
        detail: None,
        required_scopes: Some("any_of: patient/Observation.rs".into()),
        granted_scopes: Some(
            vec![
                "launch/patient".to_owned(),
                "patient/Observation.rs".to_owned(),
            ]
            .into(),
        ),
        issuer: Some("https://idp.example.org".into()),
        client_id: Some(format!("client-{}", (mix >> 20) % CLIENTS).into()),
        subject: Some(format!("user-{}", (mix >> 30) % SUBJECTS).into()),
        fhir_user: None,
        patient: Some(format!("pat-{patient}").into()),
        patients: vec![format!("pat-{patient}")],
        jti: None,
        status: 200,
        upstream_status: Some(200),
        latency_ms: 12.5,
        upstream_latency_ms: Some(11.0),
        bytes_in: 0,
        bytes_out: 2048,
        policy_version: "3f2a9c1e".into(),
        rate_limit: None,
        explanation: Default::default(),
    }
}

fn config(dir: &std::path::Path, durability: AuditDurability, rotate: u64) -> AuditConfig {
    AuditConfig {
        target: AuditTarget::File(dir.join("audit.jsonl")),
        queue_capacity: 65_536,
        flush_interval: Duration::from_millis(100),
        allow_query_params: Vec::new(),
        durability,
        rotate_bytes: Some(rotate),
        rotate_interval: None,
        checkpoint: None,
        auditevent_path: None,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("DIR"));
    let records: u64 = args.get(2).map_or(10_000_000, |s| s.parse().unwrap());
    let rotate: u64 = args.get(3).map_or(64 << 20, |s| s.parse().unwrap());
    let strict_records: u64 = args.get(4).map_or(20_000, |s| s.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();

    // --- batched throughput ---
    let existing = dir.join("audit.jsonl").exists();
    if !existing {
        let (sink, writer) = AuditSink::open(
            &config(&dir, AuditDurability::Batched, rotate),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let task = tokio::spawn(writer.run());
        let start = Instant::now();
        for i in 0..records {
            let mut rec = record(i);
            loop {
                match sink.submit(rec) {
                    Ok(()) => break,
                    Err(AuditError::QueueFull) => {
                        rec = record(i);
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        drop(sink);
        task.await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batched: {records} records in {secs:.1} s = {:.0} records/s (record build + submit + chain + write)",
            records as f64 / secs
        );
    } else {
        println!("batched: reusing the records already in {}", dir.display());
    }

    // Wait for the rotation indexes (built on background threads).
    let start = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e.len() == 20))
        .collect();
    files.sort();
    for f in &files {
        while Index::open_fresh(f).unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "{} rotated files indexed ({:.1} s after the writer finished)",
        files.len(),
        start.elapsed().as_secs_f64()
    );

    // --- queries ---
    let probe = record(records / 2);
    let mid = probe.time.clone();
    let queries = [
        (
            "patient",
            Key::Patient,
            probe.patient.as_deref().unwrap().to_owned(),
            None,
            None,
        ),
        (
            "subject",
            Key::Subject,
            probe.subject.as_deref().unwrap().to_owned(),
            None,
            None,
        ),
        (
            "subject, 5 min range",
            Key::Subject,
            probe.subject.as_deref().unwrap().to_owned(),
            Some(record(records / 2 - 100_000).time),
            Some(mid.clone()),
        ),
        (
            "client",
            Key::Client,
            probe.client_id.as_deref().unwrap().to_owned(),
            None,
            None,
        ),
    ];
    for (name, key, value, from, to) in queries {
        let filter = Filter {
            key,
            value,
            from,
            to,
        };
        let start = Instant::now();
        let mut n = 0u64;
        let stats = query(std::slice::from_ref(&dir), &filter, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        println!(
            "query by {name}: {n} records in {:.3} s ({stats:?})",
            start.elapsed().as_secs_f64()
        );
    }

    // Worst case for the active file: a full rotated file read without its index (through
    // a link whose name has no index).
    if let Some(last) = files.last() {
        let link = dir.join("unindexed-view");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(last, &link).unwrap();
        let filter = Filter {
            key: Key::Patient,
            value: probe.patient.as_deref().unwrap().to_owned(),
            from: None,
            to: None,
        };
        let start = Instant::now();
        let stats = query(std::slice::from_ref(&link), &filter, |_| Ok(())).unwrap();
        println!(
            "scan of one full {} byte file without index: {:.3} s ({stats:?})",
            std::fs::metadata(last).unwrap().len(),
            start.elapsed().as_secs_f64()
        );
        std::fs::remove_file(&link).unwrap();
    }

    // --- strict throughput ---
    let sdir = dir.join("strict");
    let _ = std::fs::remove_dir_all(&sdir);
    std::fs::create_dir_all(&sdir).unwrap();
    let (sink, writer) = AuditSink::open(
        &config(&sdir, AuditDurability::Strict, rotate),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let task = tokio::spawn(writer.run());
    let start = Instant::now();
    let committers = 64u64;
    let mut handles = Vec::new();
    for c in 0..committers {
        let sink = sink.clone();
        handles.push(tokio::spawn(async move {
            let mut i = c;
            while i < strict_records {
                let commit = loop {
                    match sink.submit_committed(record(i)) {
                        Ok(commit) => break commit,
                        Err(_) => tokio::task::yield_now().await,
                    }
                };
                assert!(commit.committed().await);
                i += committers;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(sink);
    task.await.unwrap();
    println!(
        "strict: {strict_records} records, {committers} concurrent committers, in {secs:.1} s = {:.0} records/s",
        strict_records as f64 / secs
    );
}
