// Hot reload: a new policy takes over without dropping a request; a bad file or a
// restart-only change is refused and the running version keeps serving; SIGHUP reloads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::support::*;

/// [`POLICY`] plus an Encounter read route: what the reload brings in.
fn with_encounters() -> String {
    format!(
        "{POLICY}  - id: encounter-read\n    methods: [GET]\n    path: /Encounter/{{id}}\n    scopes: {{ any_of: [user/Encounter.r] }}\n"
    )
}

/// Replaces a file the way a deploy tool does: a whole new file renamed over the old one.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// Polls `/metrics` until `name{labels}` reaches `want`, up to 20 s.
async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = gateway.metric(name, labels).await;
        if got == Some(want) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{name}{labels:?} is {got:?}, expected {want}\nstderr:\n{}",
                gateway.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGHUP and waits until the `result` reload counter reaches `count`.
async fn reload_by_signal(stack: &Stack, result: &str, count: f64) {
    stack.gateway.signal("HUP");
    wait_for_metric(
        &stack.gateway,
        "fhirwall_reloads_total",
        &[("result", result)],
        count,
    )
    .await;
}

fn policy_path(stack: &Stack) -> std::path::PathBuf {
    stack.gateway.dir().join("policy.yaml")
}

#[tokio::test]
async fn a_changed_policy_file_takes_over_under_load_without_a_dropped_request() {
    let stack = Stack::start_with(|b| b.config_override("{ reload: { interval: 100ms } }")).await;
    let before = stack.gateway.readyz().await.1;
    let token = stack.token("user/Encounter.r", false);
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        403
    );

    // Four clients loop until the new policy has answered each of them a few times.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, url, token, stop) = (
            stack.client.clone(),
            stack.url("/fhir/Encounter/1"),
            token.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match response {
                    Ok(r) => statuses.push(r.status().as_u16()),
                    Err(e) => panic!("request failed at the connection level: {e}"),
                }
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    replace_file(&policy_path(&stack), &with_encounters());
    wait_for_metric(
        &stack.gateway,
        "fhirwall_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    // Let every client see the new version for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.backend.requests().len() < 40 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);

    for client in clients {
        let statuses = client.await.expect("client task");
        assert!(!statuses.is_empty());
        // Each client's requests are sequential: denied under the old version, allowed
        // under the new one, never back.
        let flip = statuses
            .iter()
            .position(|s| *s == 200)
            .unwrap_or(statuses.len());
        assert!(
            statuses[..flip].iter().all(|s| *s == 403)
                && statuses[flip..].iter().all(|s| *s == 200),
            "decisions flip once from deny to allow: {statuses:?}"
        );
        assert!(
            flip < statuses.len(),
            "the new policy answered: {statuses:?}"
        );
    }
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        200
    );

    // The info metric names only the new version; /readyz shows it and the reload.
    let metrics = stack.gateway.metrics().await;
    let versions: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("fhirwall_policy_info{"))
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(
        metric_value(&metrics, "fhirwall_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        metric_value(
            &metrics,
            "fhirwall_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 0.0
    );
    let (status, after) = stack.gateway.readyz().await;
    assert_eq!(status, 200);
    let detail = |body: &serde_json::Value| {
        body["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "policy")
            .expect("policy check")["detail"]
            .as_str()
            .expect("detail")
            .to_owned()
    };
    assert_ne!(detail(&before), detail(&after));
    assert!(
        detail(&after).contains("last reload (file) succeeded"),
        "{after}"
    );
    let version = versions[0].split('"').nth(1).expect("version label");
    assert!(
        detail(&after).starts_with(&format!("version {version}")),
        "{after}"
    );

    // Audit records carry the version that decided them.
    let lines = stack.gateway.wait_for_audit_lines(2).await;
    let allowed = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("an allowed record");
    assert_eq!(allowed["policy_version"], version);
}

#[tokio::test]
async fn an_invalid_policy_is_refused_with_its_position_and_the_old_one_keeps_serving() {
    let stack = Stack::start_with(|b| b.config_override("{ reload: { watch: false } }")).await;
    let token = stack.token("patient/Patient.r", true);
    // A key no route knows.
    let broken = POLICY.replace(
        "    path: /Patient/{id}\n",
        "    path: /Patient/{id}\n    scope: nothing\n",
    );
    std::fs::write(policy_path(&stack), &broken).expect("write policy");
    reload_by_signal(&stack, "failure", 1.0).await;

    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_config_last_reload_successful", &[])
            .await,
        Some(0.0)
    );
    // The log names the same file:line:col as `fhirwall check`, at error level.
    let config = stack.gateway.config_path();
    let (code, out, _) = run_cli(&["check", "--config", config.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{out}");
    let position = out
        .lines()
        .find(|l| l.contains("policy.yaml:") && l.contains("error"))
        .and_then(|l| l.split(": ").next())
        .unwrap_or_else(|| panic!("check names the error: {out}"))
        .to_owned();
    assert!(position.ends_with(":11:5"), "the inserted line: {position}");
    let stderr = stack.gateway.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("reload refused") && l.contains(&position))
        .unwrap_or_else(|| panic!("the refusal names {position}:\n{stderr}"));
    assert!(line.contains("ERROR"), "logged at error level: {line}");

    // The old policy still decides, and readiness holds with the refusal shown.
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    let (status, body) = stack.gateway.readyz().await;
    assert_eq!(status, 200);
    assert!(body.to_string().contains("refused"), "{body}");

    // Fixed: the next reload succeeds and the gauge recovers.
    std::fs::write(policy_path(&stack), with_encounters()).expect("write policy");
    reload_by_signal(&stack, "success", 1.0).await;
    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_config_last_reload_successful", &[])
            .await,
        Some(1.0)
    );
    let encounter = stack.token("user/Encounter.r", false);
    assert_eq!(
        stack
            .get("/fhir/Encounter/1", Some(&encounter))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn sighup_reloads_when_file_watching_is_off() {
    let stack = Stack::start_with(|b| b.config_override("{ reload: { watch: false } }")).await;
    let token = stack.token("user/Encounter.r", false);
    std::fs::write(policy_path(&stack), with_encounters()).expect("write policy");
    // Unwatched: nothing happens until the signal (checked through the metric, not time).
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        403
    );
    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_reloads_total", &[("result", "success")])
            .await,
        None
    );
    reload_by_signal(&stack, "success", 1.0).await;
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        200
    );
    assert!(
        stack.gateway.exit_status().is_none(),
        "SIGHUP must not end the process"
    );
    assert!(
        stack.gateway.stderr().contains("configuration reloaded"),
        "{}",
        stack.gateway.stderr()
    );
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_refused_naming_the_key() {
    let stack = Stack::start_with(|b| b.config_override("{ reload: { watch: false } }")).await;
    let config = stack.gateway.config().to_owned();
    // A reloadable change (the policy) together with one that is not (the token cache).
    std::fs::write(policy_path(&stack), with_encounters()).expect("write policy");
    std::fs::write(
        stack.gateway.config_path(),
        format!("{config}token_cache:\n  max_entries: 7\n"),
    )
    .expect("write config");
    reload_by_signal(&stack, "failure", 1.0).await;
    let stderr = stack.gateway.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("cannot change without a restart") && l.contains("token_cache")),
        "{stderr}"
    );
    // Nothing of it was applied.
    let token = stack.token("user/Encounter.r", false);
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        403
    );
}

#[tokio::test]
async fn rate_limit_state_survives_a_reload_that_keeps_the_quotas() {
    let quotas = "quotas:\n  - { id: per-client, key: client, rate: 2/1h }\n";
    let stack = Stack::start_with(|b| {
        b.policy_yaml(format!("{POLICY}{quotas}"))
            .config_override("{ reload: { watch: false } }")
    })
    .await;
    let token = stack.token("patient/Patient.r", true);
    for _ in 0..2 {
        assert_eq!(
            stack.get("/fhir/Patient/123", Some(&token)).await.status(),
            200
        );
    }
    // Another route, same quotas: the client's spent budget stays spent.
    std::fs::write(
        policy_path(&stack),
        format!("{}{quotas}", with_encounters()),
    )
    .expect("write policy");
    reload_by_signal(&stack, "success", 1.0).await;
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        429
    );
    let stderr = stack.gateway.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("kept")),
        "{stderr}"
    );

    // A changed quota starts afresh.
    let looser = "quotas:\n  - { id: per-client, key: client, rate: 3/1h }\n";
    std::fs::write(
        policy_path(&stack),
        format!("{}{looser}", with_encounters()),
    )
    .expect("write policy");
    reload_by_signal(&stack, "success", 2.0).await;
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
}

#[tokio::test]
async fn a_request_in_flight_finishes_under_the_version_it_started_with() {
    let stack = Stack::start_with(|b| b.config_override("{ reload: { watch: false } }")).await;
    let old_version = stack
        .gateway
        .metrics()
        .await
        .lines()
        .find(|l| l.starts_with("fhirwall_policy_info{"))
        .and_then(|l| l.split('"').nth(1).map(str::to_owned))
        .expect("policy version");
    stack
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(1500)));
    let token = stack.token("patient/Patient.r", true);
    let in_flight = tokio::spawn(
        stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(token.clone())
            .header("x-request-id", "in-flight-across-reload")
            .timeout(Duration::from_secs(10))
            .send(),
    );
    stack.backend.wait_for_requests(1).await;

    // The new version no longer lets patient/ tokens read Patient.
    let stricter = POLICY.replace(
        "scopes: { any_of: [patient/Patient.r, user/Patient.r] }",
        "scopes: { any_of: [user/Patient.r] }",
    );
    assert_ne!(stricter, POLICY);
    std::fs::write(policy_path(&stack), stricter).expect("write policy");
    reload_by_signal(&stack, "success", 1.0).await;

    let response = in_flight.await.expect("task").expect("answered");
    assert_eq!(
        response.status(),
        200,
        "decided and forwarded under the old version"
    );
    stack.backend.set_reply(Reply::Echo);
    let after = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(after.status(), 403, "the new version decides new requests");

    let lines = stack.gateway.wait_for_audit_lines(2).await;
    let record = lines
        .iter()
        .find(|l| l["request_id"] == "in-flight-across-reload")
        .expect("the in-flight request is audited");
    assert_eq!(record["policy_version"], old_version.as_str());
    let newer = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("the refusal");
    assert_ne!(newer["policy_version"], old_version.as_str());
}

#[tokio::test]
async fn reload_events_are_structured_in_json_logs() {
    let stack = Stack::start_with(|b| {
        b.config_override("{ reload: { watch: false }, log: { format: json } }")
    })
    .await;
    std::fs::write(policy_path(&stack), "version: 1\nroutes: []\nbogus: 1\n").expect("write");
    reload_by_signal(&stack, "failure", 1.0).await;
    std::fs::write(policy_path(&stack), with_encounters()).expect("write");
    reload_by_signal(&stack, "success", 1.0).await;

    let events: Vec<serde_json::Value> = stack
        .gateway
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let refused = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload refused"))
        })
        .unwrap_or_else(|| panic!("a refusal event: {events:#?}"));
    assert_eq!(refused["level"], "ERROR");
    assert_eq!(refused["fields"]["reload.trigger"], "signal");
    assert_eq!(refused["fields"]["line"], 3);
    assert_eq!(refused["fields"]["col"], 1);
    assert!(refused["fields"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("policy.yaml")));
    let applied = events
        .iter()
        .find(|e| e["fields"]["message"] == "configuration reloaded")
        .unwrap_or_else(|| panic!("a reload event: {events:#?}"));
    assert_eq!(applied["level"], "INFO");
    assert_eq!(applied["fields"]["reload.trigger"], "signal");
    assert_eq!(applied["fields"]["ratelimit.state"], "kept");
    assert!(applied["fields"]["policy.version"].is_string());
    assert_ne!(
        applied["fields"]["policy.version"],
        applied["fields"]["policy.previous"]
    );
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up_by_the_watch() {
    // Kubernetes mounts a ConfigMap as `<dir>/policy.yaml -> ..data/policy.yaml` with
    // `..data -> ..<timestamp>`, and updates it by swapping `..data` atomically.
    let stack = Stack::start_with(|b| b.config_override("{ reload: { interval: 100ms } }")).await;
    let mount = stack.gateway.dir().join("mount");
    std::fs::create_dir_all(mount.join("..v1")).expect("mkdir");
    std::fs::write(mount.join("..v1/policy.yaml"), POLICY).expect("write v1");
    std::os::unix::fs::symlink("..v1", mount.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/policy.yaml", mount.join("policy.yaml")).expect("link");

    // Point the configuration at the mounted file (same content: same version).
    let config = stack
        .gateway
        .config()
        .replace("policy: policy.yaml", "policy: mount/policy.yaml");
    assert_ne!(config, stack.gateway.config());
    replace_file(&stack.gateway.config_path(), &config);
    wait_for_metric(
        &stack.gateway,
        "fhirwall_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;

    // The update: a new timestamped folder, then `..data` renamed over.
    std::fs::create_dir_all(mount.join("..v2")).expect("mkdir");
    std::fs::write(mount.join("..v2/policy.yaml"), with_encounters()).expect("write v2");
    std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap");
    wait_for_metric(
        &stack.gateway,
        "fhirwall_reloads_total",
        &[("result", "success")],
        2.0,
    )
    .await;

    let token = stack.token("user/Encounter.r", false);
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        200
    );
}
