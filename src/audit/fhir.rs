//! Audit records as FHIR R4 `AuditEvent` resources, following the IHE Basic Audit Log
//! Patterns (BALP) RESTful activity profiles, for loading into a FHIR audit repository
//! (`fhirwall audit export --format auditevent`).
//!
//! The mapping, per BALP (IHE ITI BALP 1.1, "RESTful activities"):
//! - `type` is audit-event-type `rest`; `subtype` the FHIR restful-interaction (`read`,
//!   `vread`, `search-type`, `create`, ...) recovered from the method and path; `action`
//!   the matching C/R/U/D/E.
//! - agents: the client application as DICOM 110153 "Source Role ID" with its network
//!   address, the gateway as 110152 "Destination Role ID", and the user (subject /
//!   `fhirUser`) as v3-ParticipationType `IRCP` with `requestor: true`; the token's `jti`
//!   goes in the user agent's `policy`, as BALP's OAuth token-use profiles do (never the
//!   token itself).
//! - entities: the patient (audit-entity-type 1, object-role 1), the resource read or written
//!   (type 2, role 4), the query of a search (type 2, role 24, base64 of the *redacted* query)
//!   and the `X-Request-Id` (BALP BasicAuditEntityType `XrequestId`).
//! - `meta.profile` claims the BALP profile (`Read`/`PatientRead`, `Query`/`PatientQuery`,
//!   `Create`, `Update`, `Delete` and their Patient variants) only when the action
//!   succeeded, as those profiles describe successful actions; refusals and failures carry
//!   `outcome` 4 (client error) or 8 (server error) and the reason in `outcomeDesc`.
//!
//! The `id` is `fw-<seq>`: unique within one chain, and stable across exports.

use base64::Engine;
use serde_json::{json, Map, Value};

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The FHIR interaction a request was, as far as the path shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    /// restful-interaction code, `None` for a path that is not a FHIR REST path.
    pub code: Option<&'static str>,
    /// AuditEvent.action: C, R, U, D or E.
    pub action: &'static str,
    /// Resource type, when the path names one.
    pub resource_type: Option<String>,
    /// Resource id, when the path names one.
    pub id: Option<String>,
}

/// Recovers the interaction from the method and path. The path may carry a base path
/// (`/fhir/Patient/1`): the resource type is the first segment that looks like one
/// (starts with an upper-case letter).
pub fn interaction(method: &str, path: &str) -> Interaction {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let start = segs
        .iter()
        .position(|s| s.starts_with(|c: char| c.is_ascii_uppercase()) || s.starts_with('$'));
    let rest = start.map_or(&[][..], |i| &segs[i..]);
    let is_op = |s: &str| s.starts_with('$');
    let rtype = rest.first().filter(|s| !is_op(s)).map(|s| (*s).to_owned());
    let id = rest
        .get(1)
        .filter(|s| !is_op(s) && !s.starts_with('_'))
        .map(|s| (*s).to_owned());
    let by_method = match method {
        "GET" | "HEAD" => "R",
        "POST" => "C",
        "PUT" | "PATCH" => "U",
        "DELETE" => "D",
        _ => "E",
    };
    let (code, action) = match (method, rest) {
        (_, []) if start.is_none() => (None, by_method),
        (_, [op, ..]) if is_op(op) => (Some("operation"), "E"),
        (_, [_, op]) | (_, [_, _, op]) if is_op(op) => (Some("operation"), "E"),
        ("GET" | "HEAD", ["metadata"]) => (Some("capabilities"), "R"),
        ("GET" | "HEAD", [_]) => (Some("search-type"), "E"),
        ("POST", [_, search]) if *search == "_search" => (Some("search-type"), "E"),
        ("GET" | "HEAD", [_, h]) if *h == "_history" => (Some("history-type"), "R"),
        ("GET" | "HEAD", [_, _]) => (Some("read"), "R"),
        ("GET" | "HEAD", [_, _, h]) if *h == "_history" => (Some("history-instance"), "R"),
        ("GET" | "HEAD", [_, _, h, _]) if *h == "_history" => (Some("vread"), "R"),
        ("POST", [_]) => (Some("create"), "C"),
        ("PUT", [_, _]) => (Some("update"), "U"),
        ("PATCH", [_, _]) => (Some("patch"), "U"),
        ("DELETE", [_, _]) => (Some("delete"), "D"),
        _ => (None, by_method),
    };
    let (rtype, id) = if code == Some("capabilities") {
        (None, None)
    } else {
        (rtype, id)
    };
    Interaction {
        code,
        action,
        resource_type: rtype,
        id,
    }
}

/// One audit record (as read from the file, with `seq`) as an R4 AuditEvent.
pub fn audit_event(rec: &Value) -> Value {
    let s = |k: &str| rec[k].as_str().filter(|v| !v.is_empty());
    let method = s("method").unwrap_or("GET");
    let path = s("path").unwrap_or("/");
    let it = interaction(method, path);
    let status = rec["status"].as_u64().unwrap_or(0);
    let allowed = s("decision") == Some("allow");
    let outcome = match status {
        _ if !allowed && status < 500 => "4",
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let patient = s("patient");

    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    if let Some(seq) = rec["seq"].as_u64() {
        ev.insert("id".into(), json!(format!("fw-{seq}")));
    }
    if outcome == "0" {
        let profile = match (it.code, patient.is_some()) {
            (Some("read" | "vread"), false) => Some("Read"),
            (Some("read" | "vread"), true) => Some("PatientRead"),
            (Some("search-type"), false) => Some("Query"),
            (Some("search-type"), true) => Some("PatientQuery"),
            (Some("create"), false) => Some("Create"),
            (Some("create"), true) => Some("PatientCreate"),
            (Some("update" | "patch"), false) => Some("Update"),
            (Some("update" | "patch"), true) => Some("PatientUpdate"),
            (Some("delete"), false) => Some("Delete"),
            (Some("delete"), true) => Some("PatientDelete"),
            _ => None,
        };
        if let Some(p) = profile {
            ev.insert("meta".into(), json!({ "profile": [format!("{BALP}{p}")] }));
        }
    }
    ev.insert(
        "type".into(),
        json!({
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation"
        }),
    );
    if let Some(code) = it.code {
        ev.insert(
            "subtype".into(),
            json!([{ "system": "http://hl7.org/fhir/restful-interaction", "code": code }]),
        );
    }
    ev.insert("action".into(), json!(it.action));
    if let Some(t) = s("time") {
        ev.insert("recorded".into(), json!(t));
    }
    ev.insert("outcome".into(), json!(outcome));
    if outcome != "0" {
        let mut desc = format!("{} {}", status, s("reason").unwrap_or("failed"));
        if let Some(d) = s("detail") {
            desc.push_str(": ");
            desc.push_str(d);
        }
        ev.insert("outcomeDesc".into(), json!(desc));
    }

    // Agents: client (source role), gateway (destination role), user (recipient).
    let mut client = json!({
        "type": { "coding": [{ "system": DCM, "code": "110153", "display": "Source Role ID" }] },
        "who": match s("client_id") {
            Some(id) => json!({ "identifier": { "value": id } }),
            None => json!({ "display": "unauthenticated client" }),
        },
        "requestor": false
    });
    if let Some(addr) = s("client_addr") {
        client["network"] = json!({ "address": addr, "type": "2" });
    }
    let mut agents = vec![
        client,
        json!({
            "type": { "coding": [{ "system": DCM, "code": "110152", "display": "Destination Role ID" }] },
            "who": { "display": "fhirwall" },
            "requestor": false
        }),
    ];
    if s("subject").is_some() || s("fhir_user").is_some() {
        let who = match (s("fhir_user"), s("subject")) {
            (Some(fu), _) => json!({ "reference": fu }),
            (None, Some(sub)) => {
                let mut ident = json!({ "value": sub });
                if let Some(iss) = s("issuer") {
                    ident["system"] = json!(iss);
                }
                json!({ "identifier": ident })
            }
            (None, None) => unreachable!("checked above"),
        };
        let mut user = json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP",
                "display": "information recipient"
            }] },
            "who": who,
            "requestor": true
        });
        if let Some(jti) = s("jti") {
            user["policy"] = json!([jti]);
        }
        agents.push(user);
    }
    ev.insert("agent".into(), Value::Array(agents));
    ev.insert(
        "source".into(),
        json!({
            "observer": { "display": "fhirwall" },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server"
            }]
        }),
    );

    // Entities.
    let mut entities = Vec::new();
    if let Some(p) = patient {
        entities.push(json!({
            "what": { "reference": format!("Patient/{p}") },
            "type": { "system": ENTITY_TYPE, "code": "1", "display": "Person" },
            "role": { "system": OBJECT_ROLE, "code": "1", "display": "Patient" }
        }));
    }
    if it.code == Some("search-type") {
        let mut q = format!("{method} {path}");
        if let Some(query) = s("query") {
            q.push('?');
            q.push_str(query);
        }
        entities.push(json!({
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "role": { "system": OBJECT_ROLE, "code": "24", "display": "Query" },
            "query": base64::engine::general_purpose::STANDARD.encode(q)
        }));
    } else if let (Some(t), Some(id)) = (&it.resource_type, &it.id) {
        // A read of Patient/X is already the patient entity.
        if !(t == "Patient" && patient == Some(id.as_str())) {
            entities.push(json!({
                "what": { "reference": format!("{t}/{id}") },
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "role": { "system": OBJECT_ROLE, "code": "4", "display": "Domain Resource" }
            }));
        }
    } else if it.code.is_none() {
        entities.push(json!({
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "description": format!("{method} {path}")
        }));
    }
    if let Some(id) = s("request_id") {
        entities.push(json!({
            "what": { "identifier": { "value": id } },
            "type": {
                "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                "code": "XrequestId"
            }
        }));
    }
    ev.insert("entity".into(), Value::Array(entities));
    Value::Object(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_are_recovered_from_method_and_path() {
        let i = |m, p| interaction(m, p).code;
        assert_eq!(i("GET", "/fhir/Patient/1"), Some("read"));
        assert_eq!(i("GET", "/fhir/Observation"), Some("search-type"));
        assert_eq!(i("POST", "/fhir/Observation/_search"), Some("search-type"));
        assert_eq!(i("GET", "/fhir/Patient/1/_history/2"), Some("vread"));
        assert_eq!(i("POST", "/fhir/Observation"), Some("create"));
        assert_eq!(i("PUT", "/fhir/Observation/9"), Some("update"));
        assert_eq!(i("DELETE", "/fhir/Observation/9"), Some("delete"));
        assert_eq!(i("GET", "/fhir/metadata"), None);
        assert_eq!(i("POST", "/fhir/Patient/1/$everything"), Some("operation"));
        assert_eq!(i("GET", "/api/legacy/thing"), None);
        assert_eq!(interaction("GET", "/api/legacy/thing").action, "R");
    }

    #[test]
    fn a_successful_patient_search_is_a_balp_patient_query() {
        let rec = json!({
            "seq": 7, "time": "2026-01-02T03:04:05.678Z", "request_id": "r-1",
            "client_addr": "10.0.0.1", "method": "GET", "path": "/fhir/Observation",
            "query": "patient=REDACTED&_count=10", "decision": "allow", "reason": "allowed",
            "status": 200, "client_id": "app", "subject": "u1", "issuer": "https://idp",
            "patient": "123", "jti": "tok-1"
        });
        let ev = audit_event(&rec);
        assert_eq!(ev["id"], "fw-7");
        assert_eq!(ev["meta"]["profile"][0], format!("{BALP}PatientQuery"));
        assert_eq!(ev["subtype"][0]["code"], "search-type");
        assert_eq!(
            (ev["action"].as_str(), ev["outcome"].as_str()),
            (Some("E"), Some("0"))
        );
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "app");
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(ev["agent"][2]["policy"][0], "tok-1");
        assert_eq!(ev["agent"][2]["who"]["identifier"]["system"], "https://idp");
        assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/123");
        let q = base64::engine::general_purpose::STANDARD
            .decode(ev["entity"][1]["query"].as_str().unwrap())
            .unwrap();
        // The query stays redacted in the export.
        assert_eq!(q, b"GET /fhir/Observation?patient=REDACTED&_count=10");
        assert_eq!(ev["entity"][2]["what"]["identifier"]["value"], "r-1");
    }

    #[test]
    fn an_unauthenticated_refusal_is_a_failure_without_a_profile_or_user() {
        let rec = json!({
            "seq": 1, "time": "2026-01-02T03:04:05.678Z", "request_id": "r-2",
            "method": "GET", "path": "/fhir/Patient/5", "decision": "deny",
            "reason": "invalid_token", "detail": "token expired", "status": 401
        });
        let ev = audit_event(&rec);
        assert!(ev.get("meta").is_none());
        assert_eq!(ev["outcome"], "4");
        assert_eq!(ev["outcomeDesc"], "401 invalid_token: token expired");
        assert_eq!(ev["agent"].as_array().unwrap().len(), 2);
        assert_eq!(ev["agent"][0]["who"]["display"], "unauthenticated client");
        assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/5");
    }
}
