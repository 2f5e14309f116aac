//! RFC 6750 bearer credentials. (Stub: implemented by the auth work.)

/// Malformed credentials (400 `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Placeholder.
    #[error("malformed credentials")]
    Malformed,
}

/// The bearer token of a request, if any.
pub fn extract<'a>(
    headers: &'a http::HeaderMap,
    query: Option<&str>,
) -> Result<Option<&'a str>, BearerError> {
    let _ = (headers, query);
    todo!()
}
