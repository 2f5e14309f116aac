// The proxy side of the FHIR engine (issue 3): bodies read for a decision and forwarded intact, the 413 bound, response checks, batch partial forwarding, transactions refused whole, paging links, SMART discovery, audit reasons.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

/// A policy with only a `fhir:` section under `/fhir`: every request is the engine's.
const FHIR_POLICY: &str = r#"version: 1
base_path: /fhir
fhir:
  version: R4
  max_body_bytes: 4096
  max_response_bytes: 65536
routes: []
"#;

async fn stack() -> Stack {
    Stack::start_with(|b| b.policy_yaml(FHIR_POLICY)).await
}

fn fhir_reply(status: u16, body: &Value) -> Reply {
    Reply::Custom {
        status,
        content_type: FHIR_JSON.to_owned(),
        body: Bytes::from(body.to_string()),
    }
}

fn observation(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": { "text": "heart rate" },
        "subject": { "reference": format!("Patient/{patient}") },
    })
}

async fn post(
    stack: &Stack,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    stack
        .client
        .post(stack.url(path))
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("POST")
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn a_body_read_for_the_decision_is_forwarded_byte_for_byte() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.c", true);
    // Odd spacing and key order: what was read (and checked) is exactly what is forwarded.
    let body = "{ \"resourceType\":\"Observation\",  \"status\":\"final\",\n\"code\":{\"text\":\"x\"},\"subject\":{\"reference\":\"Patient/123\"} }\r\n";
    let response = post(&stack, "/fhir/Observation", &token, body).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().expect("forwarded");
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, "/fhir/Observation");
    assert_eq!(&seen.body[..], body.as_bytes());
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(
        seen.header("authorization").is_none(),
        "credentials are not forwarded"
    );
    assert!(seen.header("x-request-id").is_some());
}

/// Sends a request's head with `Expect: 100-continue`, waits (5 s at most) for what the
/// gateway answers before the body, then sends the body (if told to) and reads to the end.
/// Returns (what came before the body was sent, everything after).
async fn expect_continue_exchange(
    stack: &Stack,
    head: &str,
    body: &str,
    send_body: bool,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(stack.gateway.addr())
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .expect("the gateway answers the expectation instead of waiting for the body")
        .expect("read");
    let before = String::from_utf8_lossy(&first[..n]).into_owned();
    let mut rest = Vec::new();
    if send_body {
        stream.write_all(body.as_bytes()).await.expect("write body");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    (before, String::from_utf8_lossy(&rest).into_owned())
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_before_sending_a_body_the_engine_reads() {
    // RFC 9110 §10.1.1: curl and other clients send `Expect: 100-continue` with bodies over
    // 1 KiB and wait for `100 Continue`; fhirwall reads the body itself, so it must answer.
    let stack = stack().await;
    let token = stack.token("patient/Observation.c", true);
    let body = observation("x", "123").to_string();
    let head = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: fhirwall.test\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let (before, after) = expect_continue_exchange(&stack, &head, &body, true).await;
    assert!(
        before.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "100 Continue before the body: {before:?}"
    );
    let whole = format!("{before}{after}");
    let final_status = whole
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|r| r.strip_prefix("HTTP/1.1 "))
        .and_then(|r| r.get(..3));
    assert_eq!(final_status, Some("200"), "{whole}");
    let seen = stack.backend.last_request().expect("forwarded");
    assert_eq!(&seen.body[..], body.as_bytes());
    assert!(
        seen.header("expect").is_none(),
        "the body was already read: the backend is not asked to continue"
    );

    // A body over the bound is refused at once, without inviting the client to send it.
    let head = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: fhirwall.test\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\n\
         Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
    );
    let (before, _) = expect_continue_exchange(&stack, &head, "", false).await;
    assert!(before.starts_with("HTTP/1.1 413 "), "{before:?}");

    // No token: refused (401) before the body, no 100.
    let head = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: fhirwall.test\r\nConnection: close\r\n\
         Content-Type: {FHIR_JSON}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let (before, _) = expect_continue_exchange(&stack, &head, &body, false).await;
    assert!(before.starts_with("HTTP/1.1 401 "), "{before:?}");
}

#[tokio::test]
async fn a_create_for_another_patient_is_refused_after_reading_its_body() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.c", true);
    let body = observation("x", "456").to_string();
    let response = post(&stack, "/fhir/Observation", &token, body).await;
    refusal(response, 403, "forbidden").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_body_over_the_bound_is_refused_with_413_before_reaching_the_backend() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.c", true);
    let mut big = observation("x", "123");
    big["note"] = json!([{ "text": "x".repeat(5000) }]);
    let response = post(&stack, "/fhir/Observation", &token, big.to_string()).await;
    refusal(response, 413, "too-costly").await;

    // Chunked, without a Content-Length: refused once the bound is passed.
    let chunk = format!("{:x}\r\n{}\r\n", 3000, "y".repeat(3000));
    let request = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: fhirwall.test\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let raw = raw_exchange(stack.gateway.addr(), request.as_bytes()).await;
    assert_eq!(raw.status, 413, "{}", raw.head);
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_foreign_patients_observation_is_withheld_and_the_own_one_passes() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.r", true);
    let foreign = observation("o-foreign", "456");
    let own = observation("o-own", "123");
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/o-foreign", fhir_reply(200, &foreign));
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/o-own", fhir_reply(200, &own));

    let response = stack.get("/fhir/Observation/o-foreign", Some(&token)).await;
    refusal(response, 403, "forbidden").await;
    assert_eq!(
        stack.backend.request_count(),
        1,
        "the read itself went upstream"
    );

    let response = stack.get("/fhir/Observation/o-own", Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        own.to_string(),
        "released unchanged"
    );

    // A 404 OperationOutcome passes; a 4xx carrying another patient's resource does not.
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/gone", Reply::Status(404));
    let response = stack.get("/fhir/Observation/gone", Some(&token)).await;
    assert_eq!(response.status(), 404);
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/odd", fhir_reply(409, &foreign));
    let response = stack.get("/fhir/Observation/odd", Some(&token)).await;
    refusal(response, 403, "forbidden").await;

    let lines = stack.gateway.wait_for_audit_lines(4).await;
    let withheld = lines
        .iter()
        .find(|l| l["path"] == "/fhir/Observation/o-foreign")
        .expect("audited");
    assert_eq!(withheld["status"], 403);
    assert_eq!(withheld["upstream_status"], 200);
    assert_eq!(withheld["interaction"], "read");
    assert!(withheld["withheld"].as_str().is_some(), "{withheld}");
    assert!(withheld["reasons"].as_str().is_some(), "{withheld}");
    assert!(withheld["granted_by"].as_str().is_some(), "{withheld}");
}

fn batch(kind: &str, urls: &[&str]) -> Value {
    let entries: Vec<Value> = urls
        .iter()
        .map(|u| json!({ "request": { "method": "GET", "url": u } }))
        .collect();
    json!({ "resourceType": "Bundle", "id": "b-1", "type": kind, "entry": entries })
}

#[tokio::test]
async fn a_batch_forwards_only_allowed_entries_and_answers_in_the_original_order() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let request = batch(
        "batch",
        &[
            "Observation?patient=123",
            "Condition?patient=123",
            "Observation?patient=123&code=8867-4",
        ],
    );
    let upstream_answer = json!({
        "resourceType": "Bundle", "id": "r-1", "type": "batch-response",
        "entry": [
            { "response": { "status": "200 OK" }, "resource": { "resourceType": "Bundle", "type": "searchset", "total": 0 } },
            { "response": { "status": "200 OK" }, "resource": { "resourceType": "Bundle", "type": "searchset", "total": 1 } },
        ],
    });
    stack
        .backend
        .set_reply_for_path("/fhir", fhir_reply(200, &upstream_answer));
    let response = post(&stack, "/fhir", &token, request.to_string()).await;
    assert_eq!(response.status(), 200);
    let answer = json_of(response).await;

    let seen = stack.backend.last_request().expect("forwarded");
    let forwarded: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(forwarded["id"], "b-1", "the rest of the Bundle is kept");
    assert_eq!(forwarded["type"], "batch");
    let urls: Vec<&str> = forwarded["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "Observation?patient=123",
            "Observation?patient=123&code=8867-4"
        ]
    );

    let entries = answer["entry"].as_array().expect("entries");
    assert_eq!(answer["type"], "batch-response");
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["resource"]["total"], 0);
    assert_eq!(entries[1]["response"]["status"], "403 Forbidden");
    assert_eq!(
        entries[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(entries[2]["resource"]["total"], 1);
}

#[tokio::test]
async fn a_batch_with_every_entry_refused_is_answered_without_the_backend() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let request = batch("batch", &["Condition?patient=123", "Patient/456"]);
    let response = post(&stack, "/fhir", &token, request.to_string()).await;
    assert_eq!(response.status(), 200);
    let answer = json_of(response).await;
    assert_eq!(answer["type"], "batch-response");
    let entries = answer["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e["response"]["status"].as_str().unwrap().starts_with("403")));
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_transaction_with_one_refused_entry_is_refused_whole() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let request = batch(
        "transaction",
        &["Observation?patient=123", "Condition?patient=123"],
    );
    let response = post(&stack, "/fhir", &token, request.to_string()).await;
    refusal(response, 403, "forbidden").await;
    stack.assert_backend_untouched();
}

fn searchset(next: &str) -> Value {
    json!({
        "resourceType": "Bundle", "type": "searchset", "total": 25,
        "link": [
            { "relation": "self", "url": "http://ehr.internal/fhir/Observation?patient=123&_count=10" },
            { "relation": "next", "url": next },
        ],
        "entry": [ { "resource": observation("o1", "123") } ],
    })
}

#[tokio::test]
async fn a_page_link_is_remembered_and_authorized_as_its_search() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let next = "https://ehr.example/fhir?_getpages=abc&_getpagesoffset=10&_count=10";
    stack
        .backend
        .set_reply_for_path("/fhir/Observation", fhir_reply(200, &searchset(next)));
    stack
        .backend
        .set_reply_for_path("/fhir", fhir_reply(200, &searchset(next)));
    let response = stack
        .get("/fhir/Observation?patient=123&_count=10", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["total"], 25, "streamed unchanged");

    let page = "/fhir?_getpages=abc&_getpagesoffset=10&_count=10";
    let response = stack.get(page, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.backend.last_request().unwrap().target,
        page,
        "forwarded as the client sent it"
    );

    // A token without the search's scope cannot use the link.
    let weaker = stack.token("patient/Patient.r", true);
    refusal(stack.get(page, Some(&weaker)).await, 403, "forbidden").await;
    // Nor can another app holding the URL.
    let mut claims = stack
        .issuer
        .claims_for("patient/Observation.rs", Some(PATIENT));
    claims["client_id"] = json!("another-app");
    let other = stack.issuer.mint(claims, KeyId::Rsa1);
    refusal(stack.get(page, Some(&other)).await, 403, "forbidden").await;
}

#[tokio::test]
async fn an_unknown_page_link_is_refused() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let response = stack
        .get(
            "/fhir?_getpages=never-seen&_getpagesoffset=10",
            Some(&token),
        )
        .await;
    refusal(response, 403, "forbidden").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn the_smart_configuration_advertises_only_what_fhirwall_enforces() {
    let stack = stack().await;
    let document = json!({
        "issuer": "https://idp.example",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.rs", "patient/Observation.sr"],
        "capabilities": ["launch-standalone", "permission-v2", "x-vendor-only"],
    });
    stack.backend.set_reply_for_path(
        "/fhir/.well-known/smart-configuration",
        Reply::Custom {
            status: 200,
            content_type: "application/json".to_owned(),
            body: Bytes::from(document.to_string()),
        },
    );
    // Public: apps read it before they have a token.
    let response = stack
        .get("/fhir/.well-known/smart-configuration", None)
        .await;
    assert_eq!(response.status(), 200);
    let served = json_of(response).await;
    assert_eq!(served["token_endpoint"], "https://idp.example/token");
    assert_eq!(
        served["scopes_supported"],
        json!(["openid", "fhirUser", "launch/patient", "patient/*.rs"])
    );
    assert_eq!(
        served["capabilities"],
        json!(["launch-standalone", "permission-v2"])
    );
}

#[tokio::test]
async fn an_update_is_forwarded_only_when_the_stored_version_is_the_patients_own() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.u", true);
    let own = observation("o-own", "123");
    stack.backend.set_reply_for_path(
        "/fhir/Observation/o-foreign",
        fhir_reply(200, &observation("o-foreign", "456")),
    );
    let put = |id: &str| {
        stack
            .client
            .put(stack.url(&format!("/fhir/Observation/{id}")))
            .bearer_auth(&token)
            .header("content-type", FHIR_JSON)
            .body(observation(id, "123").to_string())
            .timeout(Duration::from_secs(10))
            .send()
    };
    // Another patient's stored Observation cannot be overwritten with one's own.
    refusal(put("o-foreign").await.unwrap(), 403, "forbidden").await;
    let seen = stack.backend.requests();
    assert_eq!(seen.len(), 1, "only the stored version was read");
    assert_eq!(seen[0].method, http::Method::GET);
    assert!(seen[0].body.is_empty());

    stack.backend.clear_requests();
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/o-own", fhir_reply(200, &own));
    let response = put("o-own").await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = stack.backend.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (&seen[0].method, &seen[1].method),
        (&http::Method::GET, &http::Method::PUT)
    );
    assert_eq!(
        &seen[1].body[..],
        observation("o-own", "123").to_string().as_bytes()
    );

    // A resource that does not exist: the backend's 404 is the answer, nothing is written.
    stack.backend.clear_requests();
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/absent", Reply::Status(404));
    let response = put("absent").await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(stack.backend.requests().len(), 1);
}

#[tokio::test]
async fn a_page_link_of_a_post_search_is_authorized_as_that_search() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let next = "/fhir?_getpages=form1&_getpagesoffset=10";
    stack.backend.set_reply_for_path(
        "/fhir/Observation/_search",
        fhir_reply(200, &searchset(next)),
    );
    let response = stack
        .client
        .post(stack.url("/fhir/Observation/_search"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("patient=123&_count=10")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        &stack.backend.last_request().unwrap().body[..],
        b"patient=123&_count=10",
        "the form is forwarded as read"
    );
    let response = stack.get(next, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(stack.backend.last_request().unwrap().target, next);
}

#[tokio::test]
async fn an_engine_decision_is_audited_with_its_route_and_reasons() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let response = stack.get("/fhir/Condition?patient=123", Some(&token)).await;
    refusal(response, 403, "forbidden").await;
    let response = stack
        .get("/fhir/Observation?patient=123", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    let lines = stack.gateway.wait_for_audit_lines(2).await;
    let denied = &lines[0];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["route"], "fhir:search-type");
    assert!(
        denied["reasons"].as_str().is_some_and(|r| !r.is_empty()),
        "{denied}"
    );
    assert!(denied.get("granted_by").is_none(), "{denied}");
    let allowed = &lines[1];
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["granted_by"], "patient/Observation.rs");
}

/// `GET [base]/.well-known/smart-configuration` (no token) while the backend answers it
/// with `status`.
async fn discovery_with_backend_answering(stack: &Stack, status: u16) -> reqwest::Response {
    let path = "/fhir/.well-known/smart-configuration";
    stack
        .backend
        .set_reply_for_path(path, Reply::Status(status));
    stack.get(path, None).await
}

#[tokio::test]
async fn without_a_smart_configuration_upstream_one_is_generated_from_the_issuer_metadata() {
    // SAL2 "Conformance": FHIR endpoints requiring authorization SHALL serve the document;
    // a backend that has none gets fhirwall's, built from the issuer's discovery metadata.
    let stack = stack().await;
    let response = discovery_with_backend_answering(&stack, 404).await;
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")));
    let doc = json_of(response).await;
    let iss = stack.issuer.issuer_url();
    assert_eq!(doc["token_endpoint"], format!("{iss}/token"));
    assert_eq!(doc["authorization_endpoint"], format!("{iss}/authorize"));
    assert_eq!(
        doc["issuer"],
        iss.as_str(),
        "sso-openid-connect: issuer and jwks_uri"
    );
    assert_eq!(doc["jwks_uri"], format!("{iss}/jwks"));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "client_credentials"])
    );
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    let caps = doc["capabilities"].as_array().expect("capabilities");
    for c in [
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "permission-offline",
        "permission-v2",
    ] {
        assert!(caps.contains(&json!(c)), "{c}: {doc}");
    }
    let scopes = doc["scopes_supported"].as_array().expect("scopes");
    assert!(scopes.contains(&json!("launch/patient")), "{doc}");
    assert!(
        scopes
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("patient/"))),
        "the engine's enforced resource scopes: {doc}"
    );

    // Neither the backend nor the issuer has a document (the metadata is kept 5 minutes,
    // so a fresh gateway shows it): the backend's 404 is passed on.
    let stack = self::stack().await;
    stack.issuer.set_discovery_failure(Some(503));
    let response = discovery_with_backend_answering(&stack, 404).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["resourceType"], "OperationOutcome");

    // Any other failure upstream is not covered up.
    stack.issuer.set_discovery_failure(None);
    let response = discovery_with_backend_answering(&stack, 500).await;
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn a_response_larger_than_the_check_bound_is_withheld() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.r", true);
    let mut big = observation("o-big", "123");
    big["note"] = json!([{ "text": "z".repeat(70_000) }]);
    stack
        .backend
        .set_reply_for_path("/fhir/Observation/o-big", fhir_reply(200, &big));
    let response = stack.get("/fhir/Observation/o-big", Some(&token)).await;
    refusal(response, 403, "forbidden").await;
}

#[tokio::test]
async fn a_batch_read_of_another_patients_resource_becomes_a_403_entry() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.r", true);
    let request = batch("batch", &["Observation/o-own", "Observation/o-foreign"]);
    let upstream_answer = json!({
        "resourceType": "Bundle", "type": "batch-response",
        "entry": [
            { "response": { "status": "200 OK" }, "resource": observation("o-own", "123") },
            { "response": { "status": "200 OK" }, "resource": observation("o-foreign", "456") },
        ],
    });
    stack
        .backend
        .set_reply_for_path("/fhir", fhir_reply(200, &upstream_answer));
    let response = post(&stack, "/fhir", &token, request.to_string()).await;
    assert_eq!(response.status(), 200);
    let answer = json_of(response).await;
    let entries = answer["entry"].as_array().unwrap();
    assert_eq!(entries[0]["resource"]["id"], "o-own");
    assert_eq!(entries[1]["response"]["status"], "403 Forbidden");
    assert!(entries[1].get("resource").is_none(), "{answer}");
    assert!(
        !answer.to_string().contains("Patient/456"),
        "nothing of it leaks"
    );
}

#[tokio::test]
async fn a_write_to_a_remembered_page_link_is_not_decided_as_the_search() {
    let stack = stack().await;
    let token = stack.token("patient/Observation.rs", true);
    let next = "/fhir?_getpages=w1&_getpagesoffset=10";
    stack
        .backend
        .set_reply_for_path("/fhir/Observation", fhir_reply(200, &searchset(next)));
    let response = stack
        .get("/fhir/Observation?patient=123", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    stack.backend.clear_requests();
    // A transaction posted to the page URL is a transaction: refused for these scopes.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "DELETE", "url": "Patient/456" } },
    ]});
    let response = post(&stack, next, &token, bundle.to_string()).await;
    assert_eq!(response.status(), 403);
    stack.assert_backend_untouched();
}
