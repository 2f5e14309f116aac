//! The policy: which requests are allowed, compiled once from a YAML file (`policies/`).
//!
//! [`Policy::route`] refuses unsafe paths and finds the route for a method and path in a
//! compiled trie (default deny); [`Policy::authorize`] decides, from the route's scope
//! requirement and the caller's [`Principal`], whether the request may go upstream. Both
//! return parts of the one [`Decision`] the rest of the gateway reads.
//!
//! (Stub: implemented by the policy work.)

pub mod decision;
pub mod path;
pub mod r4;
pub mod route;
pub mod scope;

pub use decision::{Decision, Denial, DenyReason, Permit};

use std::path::Path;
use std::sync::Arc;

use crate::auth::Principal;
use crate::config::Diagnostics;

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    version: String,
}

/// The route a request matched.
#[derive(Debug)]
pub struct RouteMatch<'p> {
    route_id: &'p Arc<str>,
}

impl Policy {
    /// Loads and compiles the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
        let _ = path;
        todo!()
    }

    /// Compiles policy source text; `path` is used in diagnostics.
    pub fn parse(src: &str, path: &Path) -> Result<Policy, Diagnostics> {
        let _ = (src, path);
        todo!()
    }

    /// Non-fatal findings (lint) from the load.
    pub fn warnings(&self) -> &Diagnostics {
        todo!()
    }

    /// Content hash of the policy source, for audit records and the info metric.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every route id, for pre-registering metric labels.
    pub fn route_ids(&self) -> Vec<Arc<str>> {
        todo!()
    }

    /// Checks the path is safe and finds its route. `path` is the raw request path (no
    /// query). Errors are complete denials (unsafe path: 400; no route: 403).
    pub fn route(&self, method: &http::Method, path: &str) -> Result<RouteMatch<'_>, Denial> {
        let _ = (method, path);
        todo!()
    }

    /// Decides a matched request. `principal` is `None` when the request carried no token;
    /// public routes allow it, others deny with [`DenyReason::MissingToken`].
    pub fn authorize(
        &self,
        m: &RouteMatch<'_>,
        path: &str,
        query: Option<&str>,
        principal: Option<&Principal>,
    ) -> Decision {
        let _ = (m, path, query, principal);
        todo!()
    }
}

impl RouteMatch<'_> {
    /// The matched route's id.
    pub fn route_id(&self) -> &Arc<str> {
        self.route_id
    }

    /// True when the route needs no token.
    pub fn is_public(&self) -> bool {
        todo!()
    }

    /// The route's requirement rendered as text (for denials and audit).
    pub fn required(&self) -> &Arc<str> {
        todo!()
    }
}
