//! Who is calling: the verified facts of a bearer token.

use std::sync::Arc;

use crate::policy::scope::GrantedScopes;

/// The verified identity and grants behind a bearer token. Built by [`crate::auth`] after
/// the token's signature and claims checked out; shared (`Arc`) between the token cache and
/// every request that presents the same token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The `iss` of the token (one of the configured issuers).
    pub issuer: Arc<str>,
    /// `sub`.
    pub subject: Option<Arc<str>>,
    /// `client_id`, else `azp`.
    pub client_id: Option<Arc<str>>,
    /// SMART `fhirUser` (URL of the user's FHIR resource).
    pub fhir_user: Option<Arc<str>>,
    /// SMART patient context (the configured patient claim, `patient` by default).
    pub patient: Option<Arc<str>>,
    /// `jti`, when present (for revocation and audit correlation).
    pub jti: Option<Arc<str>>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The granted scopes, parsed once; invalid ones are dropped and counted.
    pub scopes: GrantedScopes,
}
