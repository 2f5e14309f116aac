//! A real browser against the real gateway: Debian's Chromium, headless, runs a SMART-style
//! app page served from one origin that calls fhirwall (another origin) with a bearer token.
//! The browser itself sends the CORS preflight and enforces the answer, so this is the CORS
//! protocol as apps meet it, not as the e2e tests read the fields.
//!
//! Needs Chromium (`apt-get install chromium`), so it is ignored by default; `.ci/run` installs
//! it and runs `cargo test --test browser_cors -- --ignored`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use support::server::{handler, response, HttpServer};
use support::*;

/// What each app page posted back, by page origin.
type Results = Arc<Mutex<HashMap<String, Value>>>;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// The app: reads `Patient/123` with the token, then without it (to read the 401's
/// challenge), and posts what it could see to `/result` on its own origin.
fn page(gateway: &str, token: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>app</title><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{gateway}/Patient/123", {{
      headers: {{ "Authorization": "Bearer {token}", "Accept": "application/fhir+json" }}
    }});
    const body = await r.json();
    out.read = {{ status: r.status, resourceType: body.resourceType,
                  requestId: r.headers.get("X-Request-Id") }};
  }} catch (e) {{ out.read = {{ blocked: String(e) }}; }}
  try {{
    const r = await fetch("{gateway}/Patient/123");
    out.anonymous = {{ status: r.status, challenge: r.headers.get("WWW-Authenticate") }};
  }} catch (e) {{ out.anonymous = {{ blocked: String(e) }}; }}
  await fetch("/result", {{ method: "POST", body: JSON.stringify(out) }});
}})();
</script>"#
    )
}

/// Serves the app page on `listener` (its own loopback origin) and records what it posts
/// back under that origin.
fn app_server(
    listener: std::net::TcpListener,
    html: String,
    results: Results,
) -> (HttpServer, String) {
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let key = origin.clone();
    let html = Bytes::from(html);
    let server = HttpServer::start_on(
        listener,
        handler(move |req| {
            let (html, results, key) = (html.clone(), results.clone(), key.clone());
            async move {
                Ok(match (req.method().as_str(), req.uri().path()) {
                    ("GET", "/") => response(200, "text/html; charset=utf-8", html),
                    ("POST", "/result") => {
                        let v = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
                        results.lock().insert(key, v);
                        response(204, "text/plain", "")
                    }
                    _ => response(404, "text/plain", "not found"),
                })
            }
        }),
    );
    (server, origin)
}

/// Opens `url` in headless Chromium until the page posted its result (60 s at most).
async fn run_page(chromium: &PathBuf, url: &str, origin: &str, results: &Results) -> Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Some(v) = results.lock().get(origin) {
            break v.clone();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the page at {url} posted no result within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[tokio::test]
#[ignore = "needs Chromium: apt-get install chromium (run by .ci/run)"]
async fn a_browser_app_on_an_allowed_origin_reads_through_the_gateway_and_another_origin_is_blocked(
) {
    let chromium = chromium().expect("chromium on PATH (apt-get install chromium)");
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let results: Results = Arc::default();
    // The gateway's port is needed in the pages, the pages' origins in the gateway's config:
    // the pages are built after the gateway, from servers bound first.
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_origin = format!("http://{}", allowed.local_addr().unwrap());
    drop(allowed);
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .config_override(&format!(
            "{{ cors: {{ allowed_origins: [\"{allowed_origin}\"] }} }}"
        ))
        .start()
        .await;
    let token = issuer.mint(issuer.claims_for("patient/Patient.rs", "123"), KeyId::Rsa1);
    let html = page(&gateway.url(""), &token);

    // The allowed origin: the same port the gateway was told about.
    let listener = std::net::TcpListener::bind(allowed_origin.trim_start_matches("http://"))
        .expect("rebind the allowed origin's port");
    let (_app, _) = app_server(listener, html.clone(), results.clone());
    let seen = run_page(
        &chromium,
        &format!("{allowed_origin}/"),
        &allowed_origin,
        &results,
    )
    .await;
    assert_eq!(seen["read"]["status"], 200, "{seen}");
    assert_eq!(seen["read"]["resourceType"], "Basic", "{seen}");
    assert!(
        seen["read"]["requestId"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "X-Request-Id is exposed to the app: {seen}"
    );
    assert_eq!(seen["anonymous"]["status"], 401, "{seen}");
    assert!(
        seen["anonymous"]["challenge"]
            .as_str()
            .is_some_and(|c| c.starts_with("Bearer ")),
        "the app can read the RFC 6750 challenge: {seen}"
    );
    assert_eq!(
        backend.request_count(),
        1,
        "one read forwarded, preflights not"
    );
    let audit = gateway.wait_for_audit_lines(3).await;
    assert!(
        audit.iter().any(|r| r["route"] == "cors:preflight"),
        "the browser's preflight was answered by the gateway: {audit:?}"
    );

    // Another origin: the browser refuses to hand the app the answer.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_other, other_origin) = app_server(other, html, results.clone());
    let seen = run_page(
        &chromium,
        &format!("{other_origin}/"),
        &other_origin,
        &results,
    )
    .await;
    assert!(seen["read"]["blocked"].is_string(), "{seen}");
    assert!(seen["anonymous"]["blocked"].is_string(), "{seen}");
    assert_eq!(
        backend.request_count(),
        1,
        "the blocked preflight forwarded nothing"
    );
}
