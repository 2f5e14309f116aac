//! fhirwall: a SMART on FHIR authorization gateway.
//!
//! One request flows top to bottom through these modules:
//!
//! ```text
//!  client ──▶ proxy::Gateway::request_filter
//!              │ policy::path     refuse paths that could mean two things (400)
//!              │ policy::Policy::route   compiled trie: method + path -> route (default deny)
//!              │ ratelimit::Limiter      per-address quotas (before the token is looked at)
//!              │ auth::bearer     RFC 6750 header parsing (query-string tokens refused)
//!              │ auth::Authenticator     JWT against the issuer's JWKS, behind a moka cache
//!              │ policy::Policy::authorize   SMART scopes + patient context -> Decision
//!              │ ratelimit::Limiter      per-client/subject quotas, distinct-patients guard
//!              ▼
//!           Decision (one value, in the request context)
//!              │ Allow ──▶ proxy::upstream (X-Forwarded-*, X-Request-Id) ──▶ FHIR backend
//!              │ Deny  ──▶ proxy::respond (status, WWW-Authenticate, OperationOutcome)
//!              ▼
//!           proxy::Gateway::logging ──▶ audit (one record per request) + metrics
//! ```
//!
//! `config` loads and validates the YAML files, `server` wires everything into pingora
//! services, `admin` serves `/metrics`, `/healthz` and `/readyz`, and `dev` runs the
//! self-contained demo (sample FHIR backend and a development token issuer).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dev;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod schema;
pub mod server;
pub mod shadow;
pub mod tls;
