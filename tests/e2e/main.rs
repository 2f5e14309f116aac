//! End-to-end tests of the fhirwall gateway: the real `fhirwall` binary, started by the test
//! kit on loopback ports, in front of a recording backend and a test token issuer, exercised
//! through real HTTP (and raw TCP where an HTTP client would normalize the request).
//!
//! Every test starts its own issuer, backend and gateway, so tests run in parallel and never
//! share state. The modules follow the gateway's contract, one topic each.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod audit;
mod audit_durability;
mod authentication;
mod bearer;
mod check;
mod cors;
mod default_deny;
mod explain;
mod fhir_proxy;
mod forwarding;
mod idp_outage;
mod jwks;
mod metrics;
mod path_safety;
mod patient;
mod public;
mod reload;
mod scopes;
mod shadow;
mod shutdown;
mod tls;
mod upgrade;
mod upstream_failures;
