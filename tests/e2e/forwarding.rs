// Allowed requests: what reaches the backend (method, target, body, headers, X-Forwarded-*, X-Request-Id) and what comes back.

use bytes::Bytes;
use serde_json::Value;

use crate::common::*;
use crate::support::*;

#[tokio::test]
async fn an_allowed_post_reaches_the_backend_unchanged() {
    let stack = Stack::start().await;
    let token = stack.token("user/Observation.c", false);
    // Bytes that are not valid UTF-8 and a multi-byte character: the body is opaque.
    let mut body = br#"{"resourceType":"Observation","note":[{"text":"caf\xc3\xa9"}]}"#.to_vec();
    body.extend_from_slice(&[0x00, 0xff, 0xfe, b'\n']);
    let response = stack
        .client
        .post(stack.url("/fhir/Observation?_format=json&category=vital-signs"))
        .bearer_auth(&token)
        .header("content-type", FHIR_JSON)
        .header("x-custom-header", "custom value 1")
        .header("prefer", "return=representation")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let seen = stack
        .backend
        .last_request()
        .expect("the backend got the request");
    assert_eq!(stack.backend.request_count(), 1);
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(
        seen.target,
        "/fhir/Observation?_format=json&category=vital-signs"
    );
    assert_eq!(seen.body, Bytes::from(body), "body bytes");
    assert_eq!(seen.header("x-custom-header"), Some("custom value 1"));
    assert_eq!(seen.header("prefer"), Some("return=representation"));
    assert_eq!(seen.header("content-type"), Some(FHIR_JSON));
}

#[tokio::test]
async fn the_backend_answer_reaches_the_client_unchanged() {
    let stack = Stack::start().await;
    let body = Bytes::from_static(
        b"{\"resourceType\":\"Patient\",\"id\":\"123\",\"name\":[{\"family\":\"M\xc3\xbcller\"}]}",
    );
    stack.backend.set_reply_for_path(
        "/fhir/Patient/123",
        Reply::Custom {
            status: 201,
            content_type: "application/fhir+json; charset=utf-8".to_owned(),
            body: body.clone(),
        },
    );
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    assert_eq!(
        header(&headers, "content-type").as_deref(),
        Some("application/fhir+json; charset=utf-8")
    );
    // A header only the backend sets comes through.
    assert_eq!(
        header(&headers, ECHO_HEADER).as_deref(),
        Some("GET /fhir/Patient/123")
    );
    assert_eq!(response.bytes().await.unwrap(), body);

    // Error statuses of the backend are the backend's, not rewritten by the gateway.
    stack.backend.reset_replies();
    stack.backend.set_reply(Reply::Status(404));
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["issue"][0]["diagnostics"], "test backend answered 404",
        "the backend's own OperationOutcome: {body}"
    );
}

#[tokio::test]
async fn the_client_authorization_header_is_not_forwarded_by_default() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("authorization"), Vec::<&str>::new());
}

#[tokio::test]
async fn the_client_authorization_header_is_forwarded_when_configured() {
    let stack =
        Stack::start_with(|b| b.config_override("{ upstream: { forward_authorization: true } }"))
            .await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
}

#[tokio::test]
async fn x_forwarded_for_is_the_client_address_and_replaces_a_client_sent_one() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);

    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);

    let response = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "a spoofed X-Forwarded-For is replaced when the gateway is the edge"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_when_trusted() {
    let stack =
        Stack::start_with(|b| b.config_override("{ forwarding: { trust_forwarded_for: true } }"))
            .await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );

    // Without an incoming value there is nothing to append to.
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn x_forwarded_proto_is_http_whatever_the_client_says() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_is_the_same_upstream_and_in_the_response() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let id = header(response.headers(), "x-request-id").expect("X-Request-Id in the response");
    assert!(is_generated_request_id(&id), "{id:?}");
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-request-id"), vec![id.as_str()]);

    let again = stack.get("/fhir/Patient/123", Some(&token)).await;
    let other = header(again.headers(), "x-request-id").unwrap();
    assert!(is_generated_request_id(&other));
    assert_ne!(id, other, "every request gets its own id");
}

#[tokio::test]
async fn a_well_formed_client_request_id_is_kept() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .header("x-request-id", "client-id_42.a:b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "x-request-id").as_deref(),
        Some("client-id_42.a:b")
    );
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-request-id"), vec!["client-id_42.a:b"]);
}

#[tokio::test]
async fn a_malformed_client_request_id_is_replaced_by_a_generated_one() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    for malformed in ["has spaces in it", "quote\"d", &"x".repeat(129)] {
        let response = stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(&token)
            .header("x-request-id", malformed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{malformed:?}");
        let id = header(response.headers(), "x-request-id").unwrap();
        assert!(is_generated_request_id(&id), "{malformed:?} -> {id:?}");
        let seen = stack.backend.last_request().unwrap();
        assert_eq!(
            seen.header_all("x-request-id"),
            vec![id.as_str()],
            "{malformed:?}"
        );
    }
}

#[tokio::test]
async fn a_wildcard_route_forwards_the_whole_remaining_path() {
    let stack = Stack::start().await;
    let token = stack.token("user/Observation.rs user/Patient.rs", false);
    let response = stack
        .get("/fhir/api/reports/2024/summary?format=csv", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.target, "/fhir/api/reports/2024/summary?format=csv");
}

#[tokio::test]
async fn every_incoming_x_forwarded_for_line_is_kept_when_trusted() {
    let stack =
        Stack::start_with(|b| b.config_override("{ forwarding: { trust_forwarded_for: true } }"))
            .await;
    let token = stack.token("patient/Patient.r", true);
    let bearer = format!("Bearer {token}");
    // Two field lines are one comma-separated list (RFC 9110 §5.3); a proxy in front may add
    // its line after the client's.
    let answer = raw_get(
        stack.gateway.addr(),
        b"/fhir/Patient/123",
        &[
            ("Authorization", &bearer),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(
        seen.header_all("x-forwarded-for").join(", "),
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );
}

#[tokio::test]
async fn every_incoming_x_forwarded_for_line_is_dropped_when_not_trusted() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let bearer = format!("Bearer {token}");
    let answer = raw_get(
        stack.gateway.addr(),
        b"/fhir/Patient/123",
        &[
            ("Authorization", &bearer),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn an_absolute_form_target_is_forwarded_in_origin_form() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let request = format!(
        "GET http://fhirwall.test/fhir/Patient/123?_format=json HTTP/1.1\r\nHost: fhirwall.test\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(stack.gateway.addr(), request.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.target, "/fhir/Patient/123?_format=json");

    // An authority that disagrees with `Host` is ambiguous: refused, never forwarded.
    stack.backend.clear_requests();
    let request = format!(
        "GET http://other.example/fhir/Patient/123 HTTP/1.1\r\nHost: fhirwall.test\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(stack.gateway.addr(), request.as_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn large_bodies_pass_unchanged_both_ways() {
    let stack = Stack::start().await;
    let token = stack.token("user/Observation.c", false);
    let upload: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let response = stack
        .client
        .post(stack.url("/fhir/Observation"))
        .bearer_auth(&token)
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.backend.last_request().unwrap().body,
        Bytes::from(upload)
    );

    let download = Bytes::from(
        (0..3 * 1024 * 1024)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    stack.backend.set_reply(Reply::Custom {
        status: 200,
        content_type: "application/octet-stream".to_owned(),
        body: download.clone(),
    });
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), download);
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_backend_unchanged() {
    let stack = Stack::start().await;
    let token = stack.token("user/Observation.c", false);
    let (first, second) = (r#"{"res"#, r#"ourceType":"Observation"}"#);
    let request = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: fhirwall.test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len(),
    );
    let answer = raw_exchange(stack.gateway.addr(), request.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = stack.backend.last_request().unwrap();
    assert_eq!(seen.body_text(), r#"{"resourceType":"Observation"}"#);
}

/// A streamed (chunked) answer reaches the client as it comes: the backend sends its second
/// chunk only after the client has received the first, so a gateway that held the body
/// (for example in its connection write buffer) until the end would never finish.
#[tokio::test]
async fn a_streamed_answer_reaches_the_client_chunk_by_chunk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_seen, mut wait_first) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before sending the request");
            request.extend_from_slice(&buf[..n]);
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(b"6\r\nfirst-\r\n").await.unwrap();
        socket.flush().await.unwrap();
        wait_first.recv().await;
        socket.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
        socket.flush().await.unwrap();
    });
    let stack = Stack::start_with(|b| b.upstream(format!("http://{addr}"))).await;
    let token = stack.token("patient/Patient.r", true);
    let mut response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrives before the backend sends the rest")
        .unwrap()
        .expect("a chunk");
    assert_eq!(&first[..], b"first-");
    first_seen.send(()).await.unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
}
