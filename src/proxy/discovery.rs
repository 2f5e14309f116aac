//! SMART discovery: `GET [base]/.well-known/smart-configuration` (SAL2 "Conformance": FHIR
//! endpoints requiring authorization SHALL serve it; SMART-SEMANTICS §9: public, and its
//! `scopes_supported` lists only scopes fhirwall enforces).
//!
//! The backend's document is passed through (its endpoints belong to the authorization
//! server, which fhirwall does not replace) with two members rewritten so that an app never
//! plans on something fhirwall refuses:
//! - `scopes_supported`: the backend's non-resource scopes (`openid`, `launch/patient`, ...)
//!   and those of its resource scopes fhirwall enforces (the engine lists them, or they are
//!   valid SMART v1/v2 scopes, which fhirwall enforces exactly as granted; an invalid one,
//!   such as `patient/*.sr`, would be ignored in a token and is not advertised); when the
//!   backend lists no resource scopes, the engine's own list;
//! - `capabilities`: only the codes SMART App Launch 2.2 defines (an extension capability
//!   fhirwall does not know cannot be vouched for).
//!
//! A backend without a document (a non-2xx answer) is passed through as it answered.

use serde_json::{Map, Value};

use crate::policy::scope::GrantedScopes;

/// The path below the base.
pub const PATH: &str = "/.well-known/smart-configuration";

/// Largest backend document read (real ones are a few KiB).
pub const MAX_DOCUMENT: usize = 256 * 1024;

/// Capability codes defined by SMART App Launch 2.2 ("Capability Sets").
const CAPABILITIES: [&str; 19] = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

/// True for a request path that is the discovery document of `base`.
pub fn is_discovery(base_path: &str, path: &str) -> bool {
    path.strip_prefix(base_path) == Some(PATH)
}

/// Rewrites the backend's document as described in the module docs. `None` when it is not
/// a JSON object (it is then not passed on).
pub fn rewrite(document: &[u8], enforced: &[String]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(document) else {
        return None;
    };
    let offered: Vec<&str> = match doc.get("scopes_supported") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let scopes = supported_scopes(&offered, enforced);
    let capabilities: Option<Vec<Value>> = match doc.get("capabilities") {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter(|c| c.as_str().is_some_and(|c| CAPABILITIES.contains(&c)))
                .cloned()
                .collect(),
        ),
        _ => None,
    };
    doc.insert(
        "scopes_supported".into(),
        Value::Array(scopes.into_iter().map(Value::String).collect()),
    );
    if let Some(c) = capabilities {
        doc.insert("capabilities".into(), Value::Array(c));
    }
    serde_json::to_vec(&Value::Object(Map::from_iter(doc))).ok()
}

/// The backend's non-resource scopes, and its resource scopes that fhirwall enforces (all
/// the enforced ones when the backend names none).
fn supported_scopes(offered: &[&str], enforced: &[String]) -> Vec<String> {
    let is_resource = |s: &str| {
        ["patient/", "user/", "system/"]
            .iter()
            .any(|p| s.starts_with(p))
    };
    let mut out: Vec<String> = offered
        .iter()
        .filter(|s| !is_resource(s))
        .map(|s| (*s).to_owned())
        .collect();
    if offered.iter().any(|s| is_resource(s)) {
        out.extend(
            offered
                .iter()
                .filter(|s| {
                    is_resource(s)
                        && (enforced.iter().any(|e| e == *s)
                            || GrantedScopes::parse([**s]).invalid_count() == 0)
                })
                .map(|s| (*s).to_owned()),
        );
    } else {
        out.extend(enforced.iter().cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforced() -> Vec<String> {
        ["patient/*.rs", "user/*.cruds", "patient/*.read"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn only_enforced_resource_scopes_and_defined_capabilities_are_advertised() {
        let doc = br#"{"issuer":"https://idp","token_endpoint":"https://idp/token",
            "scopes_supported":["openid","launch/patient","patient/*.rs","system/*.cruds","patient/*.sr"],
            "capabilities":["launch-standalone","permission-v2","x-vendor-magic"]}"#;
        let out: Value = serde_json::from_slice(&rewrite(doc, &enforced()).unwrap()).unwrap();
        assert_eq!(out["token_endpoint"], "https://idp/token");
        assert_eq!(
            out["scopes_supported"],
            serde_json::json!(["openid", "launch/patient", "patient/*.rs", "system/*.cruds"])
        );
        assert_eq!(
            out["capabilities"],
            serde_json::json!(["launch-standalone", "permission-v2"])
        );
    }

    #[test]
    fn a_document_without_resource_scopes_gets_the_enforced_ones() {
        let doc = br#"{"scopes_supported":["openid"]}"#;
        let out: Value = serde_json::from_slice(&rewrite(doc, &enforced()).unwrap()).unwrap();
        assert_eq!(out["scopes_supported"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn a_document_that_is_not_an_object_is_not_passed_on() {
        assert!(rewrite(b"[1]", &enforced()).is_none());
        assert!(rewrite(b"<html>", &enforced()).is_none());
    }

    #[test]
    fn the_discovery_path_is_recognised_under_the_base_only() {
        assert!(is_discovery(
            "/fhir",
            "/fhir/.well-known/smart-configuration"
        ));
        assert!(!is_discovery("/fhir", "/.well-known/smart-configuration"));
        assert!(!is_discovery(
            "/fhir",
            "/fhir/x/.well-known/smart-configuration"
        ));
    }
}
