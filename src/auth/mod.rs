//! Authentication: from a bearer token to a verified [`Principal`].
//!
//! (Stub: implemented by the auth work.)

pub mod bearer;
mod principal;

pub use principal::Principal;

use std::sync::Arc;

use crate::config::{IssuerConfig, TokenCacheConfig};
use crate::metrics::Metrics;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Placeholder.
    #[error("invalid token")]
    Invalid,
}

impl AuthError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        "invalid"
    }
    /// True when the identity provider is unreachable.
    pub fn is_unavailable(&self) -> bool {
        false
    }
}

/// Validates bearer tokens against the configured issuers, with a verified-token cache.
pub struct Authenticator {}

impl Authenticator {
    /// Builds the authenticator; fetches nothing yet.
    pub fn new(issuers: &[IssuerConfig], cache: &TokenCacheConfig, metrics: Arc<Metrics>) -> Self {
        let _ = (issuers, cache, metrics);
        todo!()
    }

    /// Verifies `token` (from cache when possible).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let _ = token;
        todo!()
    }

    /// True when every issuer's keys are loaded.
    pub fn is_ready(&self) -> bool {
        todo!()
    }

    /// Background task: initial key load, then scheduled refreshes. Never returns.
    pub async fn run_refresh(self: Arc<Self>) {
        todo!()
    }
}
