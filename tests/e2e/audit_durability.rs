// Audit durability under SIGKILL: `strict` loses nothing a client saw; `batched` loses at most
// the records of the last flush interval. Also: the gateway's own trail verifies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::*;
use crate::support::*;

/// What the load generator saw: request ids of answered requests, with when they arrived.
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// Runs `workers` clients against the stack until `stop`, recording every answered request.
fn load(stack: &Stack, token: &str, workers: usize) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = stack.client.clone();
        let url = stack.url(&format!("/fhir/Patient/{PATIENT}"));
        let token = token.to_owned();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("load-{w}-{i}");
                let sent = client
                    .get(&url)
                    .header("x-request-id", &id)
                    .bearer_auth(&token)
                    .send()
                    .await;
                // Count a response as received once its status and headers arrived: the
                // client has seen it.
                match sent {
                    Ok(r) if r.status().as_u16() == 200 => {
                        seen.lock().push((id, Instant::now()));
                    }
                    _ => return,
                }
            }
        }));
    }
    (seen, tasks)
}

/// Starts a stack with `audit` overrides, loads it, SIGKILLs the gateway mid-load and
/// returns what clients saw, the kill instant, and the request ids in the audit file.
async fn kill_under_load(audit: &str) -> (Vec<(String, Instant)>, Instant, HashSet<String>) {
    let stack = Stack::start_with(|b| b.config_override(&format!("{{ audit: {audit} }}"))).await;
    let token = stack.token("patient/Patient.r", true);
    let (seen, tasks) = load(&stack, &token, 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.gateway.signal("KILL");
    let killed = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let recorded: HashSet<String> = stack
        .gateway
        .audit_lines()
        .iter()
        .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
        .collect();
    let seen = seen.lock().clone();
    assert!(
        seen.len() > 50,
        "the load was real: {} responses",
        seen.len()
    );
    (seen, killed, recorded)
}

#[tokio::test]
async fn in_strict_mode_every_response_a_client_saw_survives_sigkill() {
    let (seen, _, recorded) = kill_under_load("{ durability: strict, flush_interval: 10s }").await;
    let missing: Vec<_> = seen
        .iter()
        .filter(|(id, _)| !recorded.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {:?}",
        missing.len(),
        seen.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test]
async fn in_batched_mode_sigkill_loses_only_the_last_flush_interval() {
    let flush = Duration::from_millis(200);
    let (seen, killed, recorded) = kill_under_load("{ flush_interval: 200ms }").await;
    // The documented bound: records of responses sent within `flush_interval` (plus the
    // duration of one write) before the crash. The margin covers scheduling on a loaded
    // 2-core machine.
    let bound = flush + Duration::from_millis(300);
    let lost: Vec<_> = seen
        .iter()
        .filter(|(id, _)| !recorded.contains(id))
        .collect();
    for (id, at) in &lost {
        assert!(
            killed.duration_since(*at) <= bound,
            "{id} was answered {:?} before the kill and its record is lost",
            killed.duration_since(*at)
        );
    }
    eprintln!("batched: {} answered, {} lost", seen.len(), lost.len());
}

#[tokio::test]
async fn the_gateway_trail_verifies_and_an_edited_record_is_named() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    for _ in 0..5 {
        let r = stack
            .client
            .get(stack.url(&format!("/fhir/Patient/{PATIENT}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    stack.gateway.wait_for_audit_lines(5).await;
    let path = stack.gateway.audit_path();
    let (code, out, err) = run_cli(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("intact, 5 records"), "{out}");

    // Edit one record: verify names it and exits 1.
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"status\":200", "\"status\":404", 1);
    std::fs::write(&path, edited).unwrap();
    let (code, out, _) = run_cli(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1 (seq 1): Edited"), "{out}");
}

#[tokio::test]
async fn in_strict_mode_the_record_is_on_disk_when_the_response_arrives() {
    let stack = Stack::start_with(|b| {
        b.config_override("{ audit: { durability: strict, flush_interval: 1h } }")
    })
    .await;
    let token = stack.token("patient/Patient.r", true);
    let cases = [
        ("strict-allowed", Some(token.as_str()), 200u16),
        ("strict-unauthenticated", None, 401),
    ];
    for (id, token, status) in cases {
        let mut request = stack
            .client
            .get(stack.url(&format!("/fhir/Patient/{PATIENT}")))
            .header("x-request-id", id);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        // No waiting: with an hour-long flush interval only the commit can have written it.
        let lines = stack.gateway.audit_lines();
        let rec = lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no record for {id} when its response arrived"));
        assert_eq!(rec["status"], status);
        let body = response.bytes().await.unwrap();
        assert_eq!(rec["bytes_out"], body.len() as u64, "declared size of {id}");
    }
    // One record per request, not a second one from the logging phase.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.gateway.terminate();
    stack.gateway.wait_exit(Duration::from_secs(15)).await;
    let lines = stack.gateway.audit_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["request_id"] == "strict-allowed")
            .count(),
        1
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["request_id"] == "strict-unauthenticated")
            .count(),
        1
    );
}
