// Path safety: every ambiguous request path is refused with 400 over raw TCP, and nothing reaches the backend.

use serde_json::Value;

use crate::common::*;

/// Sends each raw target with a token that may read `/fhir/Patient/123` (to which most of
/// them would normalize) and checks each is refused with fhirwall's own 400 OperationOutcome
/// (`fhirwall_answers`) or at least a 400 status line; then that the backend saw nothing, and
/// that the canonical path does pass (so the refusals are about the path, not the token).
async fn assert_refused(targets: &[&[u8]], fhirwall_answers: bool) {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let bearer = format!("Bearer {token}");
    let mut wrong = Vec::new();
    for target in targets {
        let shown = String::from_utf8_lossy(target).into_owned();
        let answer = raw_get(stack.gateway.addr(), target, &[("Authorization", &bearer)]).await;
        if answer.status != 400 {
            wrong.push(format!("{shown:?}: status {}", answer.status));
            continue;
        }
        if fhirwall_answers {
            let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            if body["resourceType"] != "OperationOutcome" || body["issue"][0]["code"] != "invalid" {
                wrong.push(format!(
                    "{shown:?}: not an `invalid` OperationOutcome: {}",
                    answer.body
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these paths were not refused with 400:\n{}",
        wrong.join("\n")
    );
    stack.assert_backend_untouched();

    let control = raw_get(
        stack.gateway.addr(),
        b"/fhir/Patient/123",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        control.status, 200,
        "the canonical path passes: {}",
        control.head
    );
    assert_eq!(stack.backend.request_count(), 1);
}

#[tokio::test]
async fn dot_segments_are_refused_with_400() {
    assert_refused(
        &[
            b"/fhir/Patient/../Patient/123",
            b"/fhir/Observation/../Patient/123",
            b"/fhir/./Patient/123",
            b"/fhir/Patient/./123",
            b"/fhir/Patient/123/.",
            b"/fhir/Patient/123/..",
            b"/fhir/Patient/..",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn percent_encoded_dot_segments_are_refused_with_400() {
    assert_refused(
        &[
            b"/fhir/Observation/%2e%2e/Patient/123",
            b"/fhir/Observation/%2E%2E/Patient/123",
            b"/fhir/Observation/.%2e/Patient/123",
            b"/fhir/Observation/%2e./Patient/123",
            b"/fhir/%2e/Patient/123",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn encoded_slash_backslash_and_nul_inside_a_segment_are_refused_with_400() {
    assert_refused(
        &[
            b"/fhir/Patient%2F123",
            b"/fhir/Patient/456%2F..%2F123",
            b"/fhir/Patient/123%2f",
            b"/fhir/Patient%5C123",
            b"/fhir/Patient/123%5c",
            b"/fhir/Patient/123%00",
            b"/fhir/Patient/123%00.json",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn doubled_and_trailing_slashes_are_refused_with_400() {
    assert_refused(
        &[
            b"/fhir//Patient/123",
            b"//fhir/Patient/123",
            b"/fhir/Patient//123",
            b"/fhir/Patient/123/",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn path_parameters_are_refused_with_400() {
    assert_refused(
        &[
            b"/fhir/Patient/123;jsessionid=x",
            b"/fhir/Patient;x=1/123",
            b"/fhir;a/Patient/123",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn invalid_and_needless_percent_encoding_is_refused_with_400() {
    assert_refused(
        &[
            b"/fhir/Patient/%zz",
            b"/fhir/Patient/123%2",
            b"/fhir/Patient/123%",
            b"/fhir/%50atient/123",
            b"/fhir/Patient/%31%32%33",
            b"/fhir/Patient/12%33",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn raw_non_ascii_and_backslashes_are_refused_with_400() {
    assert_refused(
        &[
            // `é` in UTF-8.
            b"/fhir/Patient/12\xc3\xa93",
            // Full-width `Ｐ`, which NFKC folds to `P`.
            b"/fhir/\xef\xbc\xb0atient/123",
            // Cyrillic `а` in place of the Latin one.
            b"/fhir/P\xd0\xb0tient/123",
            b"/fhir/Patient/456\\..\\123",
            b"/fhir/Patient\\123",
        ],
        true,
    )
    .await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_refused_with_400() {
    // The HTTP layer may refuse it before fhirwall sees it: only the status is asserted.
    assert_refused(
        &[b"/fhir/Patient/12\xff3", b"/fhir/Patient/\xc0\xaf123"],
        false,
    )
    .await;
}
