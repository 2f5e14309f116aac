//! A small classification of FHIR REST interactions from the method and the shape of the path,
//! for quota scoping and cost weights.
//!
//! It only looks at the path below the FHIR base and at the method, never at the body or the
//! backend, so it is cheap and cannot be fooled into a cheaper class by a header. The full
//! FHIR classifier (compartments, `_include`, history kinds) will replace [`classify`]; the
//! rest of the rate limiter only sees an [`Interaction`].

/// The interaction classes quotas can be scoped to and weighted by
/// (FHIR R4 http.html §3.1.0, grouped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `read`, `vread`, `capabilities`, and anything not classified otherwise.
    Read = 0,
    /// `search` (GET or POST `_search`), compartment search, and history.
    Search = 1,
    /// `create` (POST to a type).
    Create = 2,
    /// `update` and `patch`.
    Update = 3,
    /// `delete`.
    Delete = 4,
    /// An extended operation (`$name`), or a `batch`/`transaction` (POST to the base).
    Operation = 5,
}

// === impl Interaction ===

impl Interaction {
    /// Every class, in cost-table order.
    pub const ALL: [Interaction; 6] = [
        Interaction::Read,
        Interaction::Search,
        Interaction::Create,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Operation,
    ];

    /// The name used in the policy (`interactions:`, `cost:`).
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Search => "search",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Operation => "operation",
        }
    }
}

/// Classifies a request. `path` is the request path below the FHIR base path (`/Patient/1`,
/// `/` for the base itself). Unknown shapes fall back by method: a write method is never
/// classified as a read.
pub fn classify(method: &http::Method, path: &str) -> Interaction {
    use http::Method;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let mut n = 0;
    let mut last = "";
    let mut second = "";
    let mut third = "";
    for (i, s) in segments.by_ref().enumerate() {
        // `$export`, `/Patient/1/$everything`, `/Observation/$lastn`, ...
        if s.starts_with('$') {
            return Interaction::Operation;
        }
        match i {
            1 => second = s,
            2 => third = s,
            _ => {}
        }
        last = s;
        n = i + 1;
    }
    match *method {
        Method::PUT | Method::PATCH => Interaction::Update,
        Method::DELETE => Interaction::Delete,
        Method::POST => match (n, last) {
            // batch / transaction: a bundle of anything.
            (0, _) => Interaction::Operation,
            (_, "_search") => Interaction::Search,
            _ => Interaction::Create,
        },
        Method::GET | Method::HEAD => match n {
            // System search or history at the base.
            0 => Interaction::Search,
            // `/metadata` is the capabilities interaction; `/Type`, `/_history`, `/_search`.
            1 if last == "metadata" => Interaction::Read,
            1 => Interaction::Search,
            // `/Type/id` (`/Type/_history`, `/Type/_search` are searches).
            2 if second.starts_with('_') => Interaction::Search,
            2 => Interaction::Read,
            // `/Type/id/_history`, `/Type/id/Compartment`.
            3 => Interaction::Search,
            // `/Type/id/_history/vid` is a vread.
            4 if third == "_history" => Interaction::Read,
            _ => Interaction::Search,
        },
        _ => Interaction::Read,
    }
}

/// `path` without the literal `base` prefix (`/fhir`); `None` when it is not below it.
pub fn below_base<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    if base.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(base)?;
    match rest {
        "" => Some("/"),
        r if r.starts_with('/') => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn c(method: Method, path: &str) -> &'static str {
        classify(&method, path).as_str()
    }

    #[test]
    fn reads_and_vreads_are_reads() {
        assert_eq!(c(Method::GET, "/Patient/1"), "read");
        assert_eq!(c(Method::HEAD, "/Patient/1"), "read");
        assert_eq!(c(Method::GET, "/Patient/1/_history/2"), "read");
        assert_eq!(c(Method::GET, "/metadata"), "read");
        assert_eq!(c(Method::OPTIONS, "/Patient"), "read");
    }

    #[test]
    fn searches_histories_and_compartments_are_searches() {
        assert_eq!(c(Method::GET, "/Observation"), "search");
        assert_eq!(c(Method::GET, "/"), "search");
        assert_eq!(c(Method::GET, "/Observation/_history"), "search");
        assert_eq!(c(Method::GET, "/Patient/1/_history"), "search");
        assert_eq!(c(Method::GET, "/Patient/1/Observation"), "search");
        assert_eq!(c(Method::POST, "/Observation/_search"), "search");
        assert_eq!(c(Method::POST, "/_search"), "search");
    }

    #[test]
    fn writes_are_classified_by_method() {
        assert_eq!(c(Method::POST, "/Observation"), "create");
        assert_eq!(c(Method::PUT, "/Observation/1"), "update");
        assert_eq!(c(Method::PATCH, "/Observation/1"), "update");
        assert_eq!(c(Method::DELETE, "/Observation/1"), "delete");
        assert_eq!(c(Method::DELETE, "/Observation?code=x"), "delete");
    }

    #[test]
    fn operations_and_bundles_are_operations() {
        assert_eq!(c(Method::GET, "/$export"), "operation");
        assert_eq!(c(Method::GET, "/Patient/$export"), "operation");
        assert_eq!(c(Method::POST, "/Patient/1/$everything"), "operation");
        assert_eq!(c(Method::GET, "/Observation/$lastn"), "operation");
        assert_eq!(c(Method::POST, "/"), "operation");
    }

    #[test]
    fn the_base_path_is_stripped_only_at_a_segment_boundary() {
        assert_eq!(below_base("/fhir/Patient/1", "/fhir"), Some("/Patient/1"));
        assert_eq!(below_base("/fhir", "/fhir"), Some("/"));
        assert_eq!(below_base("/fhirx/Patient", "/fhir"), None);
        assert_eq!(below_base("/Patient", ""), Some("/Patient"));
    }
}
