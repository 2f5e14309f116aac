// The FHIR backend itself, without the gateway: the suite's response-side cases only mean
// something if the backend really returns other patients' data, pages, and answers Bundles.

use serde_json::{json, Value};

use crate::support::fhir_backend::FhirBackend;
use crate::support::http_client;

async fn get(backend: &FhirBackend, target: &str) -> (u16, Value) {
    let response = http_client()
        .get(format!("{}{target}", backend.base_url()))
        .send()
        .await
        .expect("backend answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_backend_returns_other_patients_data_by_id() {
    let backend = FhirBackend::start();
    let (status, body) = get(&backend, "/fhir/Observation/obs-a").await;
    assert_eq!(status, 200);
    assert_eq!(body["subject"]["reference"], "Patient/456");
    assert!(body.to_string().contains("secret-obs-a"));
    let (status, _) = get(&backend, "/fhir/Observation/nope").await;
    assert_eq!(status, 404);
    assert_eq!(backend.request_count(), 2);
}

#[tokio::test]
async fn the_backend_searches_and_pages_at_the_base() {
    let backend = FhirBackend::start();
    let (status, body) = get(&backend, "/fhir/Observation?patient=123").await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "searchset");
    assert_eq!(body["total"], 2);
    let (_, body) = get(&backend, "/fhir/Observation?subject=123").await;
    assert_eq!(body["total"], 3, "a bare id matches Group/123 too");
    let (_, body) = get(&backend, "/fhir/Observation?patient=123&_count=1").await;
    assert_eq!(body["entry"].as_array().unwrap().len(), 1);
    let next = body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next link")
        .to_owned();
    assert!(next.contains("/fhir?_getpages="), "{next}");
    let page = http_client().get(&next).send().await.unwrap();
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["entry"][0]["resource"]["id"], "obs-2");
    let (status, _) = get(&backend, "/fhir?_getpages=unknown").await;
    assert_eq!(status, 410);
}

#[tokio::test]
async fn the_backend_follows_includes_to_other_patients() {
    let backend = FhirBackend::start();
    let (_, body) = get(
        &backend,
        "/fhir/Observation?_id=obs-2&_include=Observation:has-member:Observation",
    )
    .await;
    let ids: Vec<_> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["obs-2", "obs-a"]);
}

#[tokio::test]
async fn the_backend_answers_batches_in_order() {
    let backend = FhirBackend::start();
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/123" } },
        { "request": { "method": "GET", "url": "Observation/none" } },
        { "request": { "method": "POST", "url": "Observation" }, "resource": { "resourceType": "Observation" } },
    ] });
    let response = http_client()
        .post(format!("{}/fhir", backend.base_url()))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "batch-response");
    let statuses: Vec<_> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["200 OK", "404 Not Found", "201 Created"]);
}
