//! SMART on FHIR scope grammar (stub: implemented by the policy work).

use std::fmt;
use std::str::FromStr;

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(String);

/// Why a scope string is not a valid scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope `{0}`")]
pub struct ScopeError(pub String);

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Scope(s.to_string()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scopes granted by a token, parsed once.
#[derive(Debug, Clone, Default)]
pub struct GrantedScopes {
    scopes: Vec<Scope>,
    invalid: u32,
}

impl GrantedScopes {
    /// Parses the token's scope values; invalid ones are ignored and counted, never widened.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        let mut g = GrantedScopes::default();
        for s in items {
            match s.parse() {
                Ok(sc) => g.scopes.push(sc),
                Err(_) => g.invalid += 1,
            }
        }
        g
    }

    /// How many scope values were invalid and ignored.
    pub fn invalid_count(&self) -> u32 {
        self.invalid
    }

    /// The valid scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }
}
