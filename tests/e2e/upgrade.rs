// Zero-downtime binary upgrade: a second process started with `serve --upgrade` takes the
// listening sockets over from the first (SIGQUIT), which drains and exits; clients keep
// being answered throughout.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::support::gateway::BIN;
use crate::support::*;

/// Kills the upgraded process when the test ends, whatever happens.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_upgrade_hands_the_listener_over_without_refusing_a_connection() {
    let stack = Stack::start_with(|b| {
        b.config_override("{ upgrade_sock: upgrade.sock, shutdown_grace: 2s }")
    })
    .await;
    let token = stack.token("patient/Patient.r", true);

    // The new process writes its own audit file: two processes never append to one chain.
    let old_audit = stack.gateway.audit_path();
    let new_audit = stack.gateway.dir().join("audit-new.jsonl");
    let config = stack.gateway.config().replace(
        &old_audit.display().to_string(),
        &new_audit.display().to_string(),
    );
    assert_ne!(
        config,
        stack.gateway.config(),
        "the audit path is in the config"
    );
    let new_config = stack.gateway.dir().join("config-new.yaml");
    std::fs::write(&new_config, config).expect("write the new config");

    // A client sends requests one after another, each on a new connection, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (url, token, stop) = (stack.url("/fhir/Patient/123"), token.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            let mut answered = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {answered} was not answered: {e}"));
                assert_eq!(response.status(), 200, "request {answered}");
                answered += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answered
        })
    };

    // The new process waits (up to 5 s) for the listeners; the old one sends them on SIGQUIT.
    let mut new = Reaped(
        Command::new(BIN)
            .args(["serve", "--upgrade", "--config"])
            .arg(&new_config)
            .current_dir(stack.gateway.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the new process"),
    );
    stack.gateway.signal("QUIT");
    let exited = stack.gateway.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exited.is_some(),
        "the old process drains and exits:\n{}",
        stack.gateway.stderr()
    );
    assert!(
        stack.gateway.stderr().contains("listener sockets sent"),
        "{}",
        stack.gateway.stderr()
    );
    assert!(
        new.0.try_wait().expect("wait").is_none(),
        "the new process serves on"
    );

    // Served by the new process alone from here on.
    let served_before = stack.backend.requests().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.backend.requests().len() < served_before + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new process answers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let answered = client.await.expect("every request was answered");
    assert!(answered >= 20);

    // Each process audited what it served, in its own file, with an intact chain.
    let status = Command::new("kill")
        .args(["-TERM", &new.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while new.0.try_wait().expect("wait").is_none() {
        assert!(
            tokio::time::Instant::now() < exit_deadline,
            "the new process stops on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_lines = std::fs::read_to_string(&new_audit).unwrap_or_default();
    assert!(new_lines.lines().count() >= 20, "the new process audits");
    assert!(
        !stack.gateway.audit_lines().is_empty(),
        "the old process audited"
    );
    for file in [&old_audit, &new_audit] {
        let (code, out, err) = run_cli(&["audit", "verify", file.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{out}{err}");
    }
}
