//! Why a bearer token was refused: one variant per failure, each with a stable code.

/// Why a token was refused.
///
/// The `Display` text is sent to the client (`error_description` of `WWW-Authenticate`, and
/// the OperationOutcome): it never names internals or echoes the token, and contains no `"` or
/// `\`, so it can go inside an RFC 9110 quoted-string as is.
///
/// Every variant but [`AuthError::KeysUnavailable`] and
/// [`AuthError::IntrospectionUnavailable`] is the client's problem: 401 `invalid_token`
/// (RFC 6750 §3.1). Those two are ours (the identity provider cannot be had): 503, see
/// [`AuthError::is_unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed token: not `b64token` syntax, or a JWS whose parts are not
    /// base64url JSON, or whose claims have the wrong types.
    #[error("the access token is malformed")]
    Malformed,
    /// Not a JWT (an opaque reference token), and no token introspection is configured.
    #[error("the access token is not a signed JWT")]
    Opaque,
    /// `alg` is `none`, symmetric (`HS*`), unknown, not allowed for the issuer, or not the
    /// key's algorithm.
    #[error("the access token signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// `iss` is not one of the configured issuers.
    #[error("the access token issuer is not trusted")]
    UntrustedIssuer,
    /// No signing key of the issuer matches the token's `kid`, even after refreshing the
    /// issuer's key set.
    #[error("the access token signing key is not known")]
    UnknownKey,
    /// The signature does not verify with the issuer's key.
    #[error("the access token signature is invalid")]
    BadSignature,
    /// `exp` is past (beyond the allowed clock skew).
    #[error("the access token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// None of the token's `aud` values is an audience of this gateway.
    #[error("the access token is not intended for this server")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is missing. Only static claim names, never
    /// token data.
    #[error("the access token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// The issuer's signing keys could not be fetched and none are loaded: the token cannot
    /// be judged either way (503, not 401).
    #[error("the identity provider is unavailable; try again later")]
    KeysUnavailable,
    /// RFC 7662 §2.2: the provider says the token is not active (unknown, expired, revoked at
    /// the provider, or not for this gateway).
    #[error("the access token is not active")]
    Inactive,
    /// Revoked in the gateway (admin endpoint), by token, `jti`, client or subject.
    #[error("the access token has been revoked")]
    Revoked,
    /// The introspection endpoint could not be asked (unreachable, timeout, error answer,
    /// open circuit) and no result is cached: the token cannot be judged (503, not 401).
    #[error("the identity provider is unavailable; try again later")]
    IntrospectionUnavailable,
}

// === impl AuthError ===

impl AuthError {
    /// A stable, bounded code for metrics labels (`token_validations{result}`) and audit
    /// records.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::Opaque => "opaque",
            AuthError::UnsupportedAlgorithm => "unsupported_algorithm",
            AuthError::UntrustedIssuer => "untrusted_issuer",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Inactive => "inactive",
            AuthError::Revoked => "revoked",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
        }
    }

    /// True when the failure is ours, not the token's (answer 503, not 401):
    /// [`AuthError::KeysUnavailable`] and [`AuthError::IntrospectionUnavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::KeysUnavailable | AuthError::IntrospectionUnavailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[AuthError] = &[
        AuthError::Malformed,
        AuthError::Opaque,
        AuthError::UnsupportedAlgorithm,
        AuthError::UntrustedIssuer,
        AuthError::UnknownKey,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongAudience,
        AuthError::MissingClaim("exp"),
        AuthError::KeysUnavailable,
        AuthError::Inactive,
        AuthError::Revoked,
        AuthError::IntrospectionUnavailable,
    ];

    #[test]
    fn messages_fit_in_a_quoted_string() {
        for e in ALL {
            let s = e.to_string();
            assert!(!s.is_empty());
            assert!(
                s.bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
                "{s:?}"
            );
        }
    }

    #[test]
    fn codes_are_distinct_snake_case_labels() {
        let mut codes: Vec<_> = ALL.iter().map(AuthError::code).collect();
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
    }

    #[test]
    fn only_an_unreachable_provider_is_unavailable() {
        for e in ALL {
            assert_eq!(
                e.is_unavailable(),
                matches!(
                    e,
                    AuthError::KeysUnavailable | AuthError::IntrospectionUnavailable
                ),
                "{e:?}"
            );
        }
    }
}
