//! JWT mechanics: the shape of a token, its unverified routing facts (`alg`, `kid`, `iss`),
//! the per-algorithm [`Validation`] of an issuer, signature and claim verification through
//! `jsonwebtoken`, and the verified claims turned into a [`Principal`].
//!
//! The order matters: only `alg`, `kid` and `iss` are read before the signature is checked,
//! and only to pick the issuer and the key. Everything that becomes part of the
//! [`Principal`] comes from the payload `jsonwebtoken` verified.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthError, Principal};
use crate::config::IssuerConfig;
use crate::policy::scope::GrantedScopes;

/// Tokens longer than this are refused as malformed before any decoding. Real access tokens
/// are a few KiB at most; the bound caps the work an anonymous client can ask for.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What kind of token a `b64token` is.
pub(crate) enum Shape {
    /// Three dot-separated parts: a JWS in compact serialization (RFC 7515 §7.1).
    Jws,
    /// Anything else: an opaque (reference) token, or a JWE, which only the authorization
    /// server can read. Token introspection (RFC 7662) is where such tokens would go.
    Opaque,
}

/// The facts read from a token *before* its signature is verified, used only to pick the
/// issuer and the key.
#[derive(Debug)]
pub(crate) struct Unverified {
    /// The header's `alg`; never `none` or `HS*`.
    pub(crate) alg: Algorithm,
    /// The header's `kid`.
    pub(crate) kid: Option<String>,
    /// The payload's `iss`.
    pub(crate) iss: String,
}

/// The JOSE header fields fhirwall looks at. Unknown fields are ignored, but header fields
/// that point at keys (`jku`, `jwk`, `x5u`, `x5c`) are never used: keys only come from the
/// issuer's configured JWKS.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The payload field used to route a token to its issuer.
#[derive(Deserialize)]
struct RoutingClaims<'a> {
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
}

/// Classifies a token that already passed the `b64token` syntax check.
pub(crate) fn shape(token: &str) -> Shape {
    if token.bytes().filter(|&b| b == b'.').count() == 2 {
        Shape::Jws
    } else {
        Shape::Opaque
    }
}

/// Reads `alg`, `kid` and `iss` of a JWS without verifying it.
///
/// Refuses `alg: none` and `HS*` here, before any key is looked at: a shared-secret
/// algorithm verified with a public key (the RSA public key PEM as HMAC secret) is the
/// classic key-confusion attack, and nothing in a JWKS of public keys can verify `none`.
pub(crate) fn inspect(token: &str) -> Result<Unverified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };

    let header = decode_part(header)?;
    let header: JoseHeader<'_> =
        serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; fhirwall
    // understands none, so such a token is refused rather than half-read.
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    let alg = parse_alg(&header.alg)?;

    let payload = decode_part(payload)?;
    let claims: RoutingClaims<'_> =
        serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
    let iss = claims.iss.ok_or(AuthError::MissingClaim("iss"))?;

    Ok(Unverified {
        alg,
        kid: header.kid.map(Cow::into_owned),
        iss: iss.into_owned(),
    })
}

/// An asymmetric JWS algorithm, or `UnsupportedAlgorithm`.
fn parse_alg(alg: &str) -> Result<Algorithm, AuthError> {
    let alg = Algorithm::from_str(alg).map_err(|_| AuthError::UnsupportedAlgorithm)?;
    if is_asymmetric(alg) {
        Ok(alg)
    } else {
        Err(AuthError::UnsupportedAlgorithm)
    }
}

/// True for the public-key algorithms; false for `HS*`, which fhirwall never accepts.
pub(crate) fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// RFC 7515 §2: base64url without padding.
fn decode_part(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)
}

/// The [`Validation`] of `issuer` for tokens signed with `alg`.
///
/// One per algorithm because `jsonwebtoken` insists every algorithm of a `Validation` be of
/// the key's family; they are built once, when the authenticator is.
pub(crate) fn validation(issuer: &IssuerConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.leeway.as_secs();
    v.reject_tokens_expiring_in_less_than = 0;
    v.validate_exp = true;
    // `nbf` is checked when present (RFC 7519 §4.1.5); jsonwebtoken's default skips it.
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&issuer.audiences);
    v.set_issuer(&[issuer.issuer.as_str()]);
    // Without these in the required set, jsonwebtoken skips `iss`/`aud` checks for tokens
    // that simply leave the claim out.
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// Verifies the signature with `key`, then the registered claims with `validation`, and
/// returns the verified payload.
pub(crate) fn verify(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthError> {
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| map_error(e.kind()))?;
    // RFC 7519 §4.1.6 leaves `iat` unchecked, but a token issued in the future (beyond the
    // clock-skew leeway) comes from a broken or forged issuer clock: refuse it like `nbf`.
    if let Some(iat) = claims.get("iat") {
        let iat = numeric_date(iat).ok_or(AuthError::Malformed)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if iat > now.saturating_add(validation.leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(claims)
}

/// One `jsonwebtoken` failure as an [`AuthError`].
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::UntrustedIssuer,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::MissingClaim("exp"),
            "iss" => AuthError::MissingClaim("iss"),
            "aud" => AuthError::MissingClaim("aud"),
            // Not in our required set; should not happen, and is the token's fault if so.
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::UnsupportedAlgorithm,
        // A key the crypto backend cannot use; keys are checked when the JWKS is loaded, so
        // this is a key the token cannot be verified with: fail closed as a bad signature.
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        // Bad base64, bad JSON, a non-numeric `exp`, and whatever jsonwebtoken adds later.
        _ => AuthError::Malformed,
    }
}

/// The [`Principal`] of a verified token.
///
/// Claims fhirwall relies on must have the right type, or the token is refused as
/// [`AuthError::Malformed`]: in particular a non-string patient claim is refused rather than
/// read as "no patient context", since a token meant to be limited to one patient must never
/// come out unrestricted (or restricted differently) because its claim had an unexpected
/// shape.
pub(crate) fn principal(
    issuer: &Arc<str>,
    patient_claim: &str,
    claims: &Map<String, Value>,
) -> Result<Principal, AuthError> {
    let expires_at = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(AuthError::MissingClaim("exp"))?;

    let scopes = match (claims.get("scope"), claims.get("scp")) {
        // RFC 8693 §4.2 / RFC 9068 §2.2.3: `scope` is one space-separated string.
        (Some(scope), _) if !scope.is_null() => parse_scopes(scope, false)?,
        // `scp`: an array of strings (Azure AD, Okta), or a space-separated string.
        (_, Some(scp)) if !scp.is_null() => parse_scopes(scp, true)?,
        _ => GrantedScopes::parse(std::iter::empty()),
    };

    Ok(Principal {
        issuer: Arc::clone(issuer),
        subject: string_claim(claims, "sub")?,
        client_id: match string_claim(claims, "client_id")? {
            Some(id) => Some(id),
            None => string_claim(claims, "azp")?,
        },
        fhir_user: string_claim(claims, "fhirUser")?,
        patient: string_claim(claims, patient_claim)?,
        jti: string_claim(claims, "jti")?,
        expires_at,
        scopes,
    })
}

/// A NumericDate (RFC 7519 §2) as whole seconds, rounded down so a cached token never
/// outlives its `exp`.
fn numeric_date(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f.floor() as u64)
        }),
        _ => None,
    }
}

/// A string claim; absent or `null` is `None`, any other type is malformed.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<Arc<str>>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(AuthError::Malformed),
    }
}

/// Scope values from a space-separated string, or (when `array_ok`) an array of strings.
fn parse_scopes(v: &Value, array_ok: bool) -> Result<GrantedScopes, AuthError> {
    match v {
        Value::String(s) => Ok(GrantedScopes::parse(s.split(' ').filter(|s| !s.is_empty()))),
        Value::Array(items) if array_ok => {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => values.push(s.as_str()),
                    _ => return Err(AuthError::Malformed),
                }
            }
            Ok(GrantedScopes::parse(values))
        }
        _ => Err(AuthError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: &Value, payload: &Value) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Scope values the token carried, valid or not: what is valid is the scope grammar's
    /// business, not this module's.
    fn scope_values(p: &Principal) -> usize {
        p.scopes.iter().count() + p.scopes.invalid_count() as usize
    }

    #[test]
    fn three_part_tokens_are_jws_and_the_rest_opaque() {
        assert!(matches!(shape("a.b.c"), Shape::Jws));
        assert!(matches!(shape("a.b.c.d.e"), Shape::Opaque));
        assert!(matches!(shape("2YotnFZFEjr1zCsicMWpAA"), Shape::Opaque));
        assert!(matches!(shape("a.b"), Shape::Opaque));
    }

    #[test]
    fn inspect_reads_alg_kid_and_iss() {
        let t = token(
            &json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
            &json!({"iss": "https://idp", "sub": "x"}),
        );
        let u = inspect(&t).unwrap();
        assert_eq!(u.alg, Algorithm::RS256);
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.iss, "https://idp");
    }

    #[test]
    fn inspect_refuses_none_symmetric_and_unknown_algorithms() {
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "ES512", "RSA-OAEP", "",
        ] {
            let t = token(&json!({"alg": alg}), &json!({"iss": "https://idp"}));
            assert_eq!(
                inspect(&t).unwrap_err(),
                AuthError::UnsupportedAlgorithm,
                "{alg}"
            );
        }
    }

    #[test]
    fn inspect_refuses_malformed_parts() {
        let good_payload = b64(&json!({"iss": "https://idp"}));
        let cases = [
            format!("!!.{good_payload}.sig"),
            format!("{}.{good_payload}.sig", URL_SAFE_NO_PAD.encode(b"not json")),
            format!("{}=.{good_payload}.sig", b64(&json!({"alg": "RS256"}))),
            format!("{}.{good_payload}.sig", b64(&json!({"kid": "k"}))),
            format!(
                "{}.{good_payload}.sig",
                b64(&json!({"alg": "RS256", "crit": ["b64"]}))
            ),
            format!(
                "{}.{}.sig",
                b64(&json!({"alg": "RS256"})),
                b64(&json!({"iss": ["a"]}))
            ),
            format!("{}.{}.sig", b64(&json!({"alg": "RS256"})), b64(&json!([1]))),
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","alg":"HS256"}"#),
                good_payload
            ),
        ];
        for t in cases {
            assert_eq!(inspect(&t).unwrap_err(), AuthError::Malformed, "{t}");
        }
    }

    #[test]
    fn inspect_requires_iss() {
        let t = token(&json!({"alg": "ES256"}), &json!({"sub": "x"}));
        assert_eq!(inspect(&t).unwrap_err(), AuthError::MissingClaim("iss"));
    }

    #[test]
    fn principal_takes_scope_string_and_identity_claims() {
        let iss: Arc<str> = "https://idp".into();
        let p = principal(
            &iss,
            "patient",
            &claims(json!({
                "exp": 2000000000u64, "sub": "u1", "client_id": "app", "azp": "other",
                "jti": "j1", "fhirUser": "Practitioner/1", "patient": "123",
                "scope": "patient/Observation.rs  patient/Condition.rs user/Patient.rs",
                "scp": ["user/Encounter.rs"],
            })),
        )
        .unwrap();
        assert_eq!(&*p.issuer, "https://idp");
        assert_eq!(p.subject.as_deref(), Some("u1"));
        assert_eq!(p.client_id.as_deref(), Some("app"));
        assert_eq!(p.jti.as_deref(), Some("j1"));
        assert_eq!(p.fhir_user.as_deref(), Some("Practitioner/1"));
        assert_eq!(p.patient.as_deref(), Some("123"));
        assert_eq!(p.expires_at, 2000000000);
        assert_eq!(
            scope_values(&p),
            3,
            "scope wins over scp; empty values skipped"
        );
        assert_eq!(p.scopes.iter().count(), 3);
    }

    #[test]
    fn principal_falls_back_to_azp_and_scp() {
        let iss: Arc<str> = "https://idp".into();
        let p = principal(
            &iss,
            "patient",
            &claims(json!({
                "exp": 2000000000.9, "azp": "spa",
                "scp": ["patient/Observation.rs", "patient/Condition.rs"],
            })),
        )
        .unwrap();
        assert_eq!(p.client_id.as_deref(), Some("spa"));
        assert_eq!(p.expires_at, 2000000000, "rounded down, never past exp");
        assert_eq!(scope_values(&p), 2);
        assert_eq!(p.patient, None);

        let c = claims(json!({"exp": 1, "scp": "user/Patient.rs user/Observation.rs"}));
        let p = principal(&iss, "patient", &c).unwrap();
        assert_eq!(scope_values(&p), 2);

        let p = principal(&iss, "patient", &claims(json!({"exp": 1}))).unwrap();
        assert_eq!(scope_values(&p), 0);
    }

    #[test]
    fn principal_reads_the_configured_patient_claim() {
        let iss: Arc<str> = "https://idp".into();
        let c = claims(json!({"exp": 1, "patient": "wrong", "ctx_patient": "42"}));
        let p = principal(&iss, "ctx_patient", &c).unwrap();
        assert_eq!(p.patient.as_deref(), Some("42"));
    }

    #[test]
    fn principal_refuses_claims_of_the_wrong_type() {
        let iss: Arc<str> = "https://idp".into();
        for c in [
            json!({"exp": 1, "patient": 123}),
            json!({"exp": 1, "patient": ["1", "2"]}),
            json!({"exp": 1, "patient": {"id": "1"}}),
            json!({"exp": 1, "sub": 5}),
            json!({"exp": 1, "client_id": true}),
            json!({"exp": 1, "scope": ["a"]}),
            json!({"exp": 1, "scp": ["a", 1]}),
            json!({"exp": 1, "scp": 7}),
        ] {
            assert_eq!(
                principal(&iss, "patient", &claims(c.clone())).unwrap_err(),
                AuthError::Malformed,
                "{c}"
            );
        }
        assert_eq!(
            principal(&iss, "patient", &claims(json!({"exp": "soon"}))).unwrap_err(),
            AuthError::MissingClaim("exp")
        );
    }

    #[test]
    fn validation_requires_exp_iss_and_aud_and_checks_nbf() {
        let cfg = crate::auth::test_support::issuer_config("https://idp", None);
        let v = validation(&cfg, Algorithm::ES256);
        for c in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(c), "{c}");
        }
        assert!(v.validate_nbf && v.validate_exp && v.validate_aud);
        assert_eq!(v.algorithms, [Algorithm::ES256]);
    }
}
