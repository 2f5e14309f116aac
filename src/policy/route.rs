//! The compiled route trie: method + raw path -> route, in time that depends on the path's
//! length and the policy's shape, never on the number of routes.
//!
//! Patterns are split into segments: literals (`Patient`), `{name}` (exactly one segment) and a
//! final `{*name}` (one or more remaining segments). Each trie node has a hash map of literal
//! children, at most one parameter child, at most one tail, and a table of routes by method
//! for patterns that end there.
//!
//! Matching walks the path one segment at a time, preferring literal > `{param}` > `{*tail}`,
//! and backtracks to the next kind when a branch reaches no node with routes. The first node
//! with routes decides: if none of its routes allows the method, the request has no route,
//! even if a less specific pattern would allow the method (so `GET /Observation/_search`,
//! where only `POST` is routed, does not fall through to `GET /Observation/{id}`). Each trie
//! node sits at one depth and can only ever see one segment of a given path, so a match
//! visits every node at most once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The methods a route can list. `HEAD` also matches routes listing `GET` (RFC 9110 §9.3.2).
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const GET: usize = 0;
const HEAD: usize = 1;

/// Most `{param}`/`{*tail}` captures in one pattern.
pub const MAX_CAPTURES: usize = 16;

/// Most segments in one pattern (base path included).
pub const MAX_SEGMENTS: usize = 64;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text (case-sensitive, compared with the raw path segment).
    Literal(Box<str>),
    /// `{name}`: any one segment.
    Param(Box<str>),
    /// `{*name}`: one or more remaining segments; only last.
    Tail(Box<str>),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pattern {
    segments: Vec<Segment>,
}

/// Why a route pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not starting with `/`.
    #[error("a path pattern must start with `/`")]
    NotAbsolute,
    /// `//` or a trailing `/`.
    #[error("a path pattern cannot contain empty segments (`//` or a trailing `/`)")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("a path pattern cannot contain `.` or `..` segments")]
    DotSegment,
    /// A literal character the path check would refuse, or `%`.
    #[error("`{0}` is not allowed in a literal path segment (allowed: letters, digits and -._~!$&'()*+,=:@)")]
    InvalidCharacter(char),
    /// `{`/`}` not around a whole segment.
    #[error("a parameter must be a whole segment, like `{{id}}` or `{{*rest}}`")]
    PartialParameter,
    /// A parameter name outside `[a-z_][a-z0-9_]*`.
    #[error("invalid parameter name `{0}` (use lower case letters, digits and `_`, not starting with a digit)")]
    InvalidName(String),
    /// The same name twice.
    #[error("parameter `{0}` appears twice in the pattern")]
    DuplicateName(String),
    /// `{*tail}` not last.
    #[error("a `{{*{0}}}` tail parameter must be the last segment")]
    TailNotLast(String),
    /// A parameter where only literals are allowed (the base path).
    #[error("parameters are not allowed here")]
    ParameterNotAllowed,
    /// Too many captures or segments.
    #[error(
        "the pattern is too long (at most {MAX_SEGMENTS} segments and {MAX_CAPTURES} parameters)"
    )]
    TooLong,
}

/// Byte ranges of the captured segments in the matched path, in pattern order. Kept as
/// ranges so a match does not borrow the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captures {
    ranges: [(u16, u16); MAX_CAPTURES],
    len: u8,
}

/// A compiled set of route patterns.
#[derive(Debug, Default)]
pub struct Trie {
    nodes: Vec<Node>,
}

/// What a path matched: the routes (by method) of the matched node, and the captures.
#[derive(Debug, Clone, Copy)]
pub struct Found<'t> {
    table: &'t MethodTable,
    /// Captured segments.
    pub captures: Captures,
}

/// Two routes claim the same shape and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// The route already in the trie.
    pub existing: u32,
    /// The (effective) method both allow.
    pub method: &'static str,
}

/// Route index by method index.
#[derive(Debug, Clone, Default)]
struct MethodTable([Option<u32>; METHODS.len()]);

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, u32, BuildHasherDefault<FnvHasher>>,
    param: Option<u32>,
    tail: Option<u32>,
    routes: MethodTable,
}

/// FNV-1a, for the literal-child maps. The maps are built from the policy and only read at
/// request time, so a client cannot add colliding keys (no HashDoS); a lookup costs one pass
/// over the segment instead of SipHash's setup.
#[derive(Default)]
struct FnvHasher(u64);

/// Index of `method` in [`METHODS`], if it is one fhirwall routes.
pub fn method_index(method: &http::Method) -> Option<usize> {
    Some(match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => return None,
    })
}

// === impl Pattern ===

impl Pattern {
    /// Parses a route pattern such as `/Patient/{id}/_history/{vid}` or `/files/{*path}`.
    /// `/` is the empty pattern (the root, or the base path itself).
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let rest = s.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
        let mut p = Pattern::default();
        if rest.is_empty() {
            return Ok(p);
        }
        for seg in rest.split('/') {
            if let Some(Segment::Tail(name)) = p.segments.last() {
                return Err(PatternError::TailNotLast(name.to_string()));
            }
            p.segments.push(parse_segment(seg)?);
        }
        let mut names: Vec<&str> = Vec::new();
        for seg in &p.segments {
            if let Segment::Param(n) | Segment::Tail(n) = seg {
                if names.contains(&&**n) {
                    return Err(PatternError::DuplicateName(n.to_string()));
                }
                names.push(n);
            }
        }
        if p.segments.len() > MAX_SEGMENTS || names.len() > MAX_CAPTURES {
            return Err(PatternError::TooLong);
        }
        Ok(p)
    }

    /// `prefix` (literal segments only) followed by `self`.
    pub fn prefixed(&self, prefix: &Pattern) -> Result<Pattern, PatternError> {
        if prefix
            .segments
            .iter()
            .any(|s| !matches!(s, Segment::Literal(_)))
        {
            return Err(PatternError::ParameterNotAllowed);
        }
        let segments: Vec<Segment> = prefix
            .segments
            .iter()
            .chain(&self.segments)
            .cloned()
            .collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(PatternError::TooLong);
        }
        Ok(Pattern { segments })
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Parameter names in capture order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) | Segment::Tail(n) => Some(&**n),
            Segment::Literal(_) => None,
        })
    }

    /// The pattern with parameter names erased (`/Patient/{}`), for conflict messages.
    pub fn shape(&self) -> String {
        if self.segments.is_empty() {
            return "/".to_owned();
        }
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(_) => out.push_str("{}"),
                Segment::Tail(_) => out.push_str("{*}"),
            }
        }
        out
    }
}

fn parse_segment(seg: &str) -> Result<Segment, PatternError> {
    if seg.is_empty() {
        return Err(PatternError::EmptySegment);
    }
    if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        let (tail, name) = match inner.strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, inner),
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(PatternError::InvalidName(name.to_owned()));
        }
        return Ok(if tail {
            Segment::Tail(name.into())
        } else {
            Segment::Param(name.into())
        });
    }
    if seg == "." || seg == ".." {
        return Err(PatternError::DotSegment);
    }
    for c in seg.chars() {
        match c {
            '{' | '}' => return Err(PatternError::PartialParameter),
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '.' | '_' | '~' => {}
            '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '=' | ':' | '@' => {}
            other => return Err(PatternError::InvalidCharacter(other)),
        }
    }
    Ok(Segment::Literal(seg.into()))
}

// === impl Captures ===

impl Captures {
    const EMPTY: Captures = Captures {
        ranges: [(0, 0); MAX_CAPTURES],
        len: 0,
    };

    /// Number of captures.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th capture, sliced out of `path` (the same path that was matched).
    pub fn get<'a>(&self, path: &'a str, i: usize) -> Option<&'a str> {
        let (a, b) = *self.ranges[..self.len()].get(i)?;
        path.get(usize::from(a)..usize::from(b))
    }

    fn push(&mut self, start: usize, end: usize) {
        // Paths are at most 8192 bytes (path::MAX_PATH_LEN) and patterns have at most
        // MAX_CAPTURES parameters, both checked before a match.
        self.ranges[self.len()] = (start as u16, end as u16);
        self.len += 1;
    }

    fn pop(&mut self) {
        self.len -= 1;
    }
}

// === impl Trie ===

impl Trie {
    /// An empty trie (matches nothing).
    pub fn new() -> Trie {
        Trie {
            nodes: vec![Node::default()],
        }
    }

    /// Adds route `route` for `pattern` and the methods `methods` (indexes into
    /// [`METHODS`]). Fails, without changing the trie, when a route with the same shape
    /// already allows one of the methods (`GET` implies `HEAD`).
    pub fn insert(
        &mut self,
        pattern: &Pattern,
        methods: &[usize],
        route: u32,
    ) -> Result<(), Conflict> {
        let mut node = 0usize;
        for seg in &pattern.segments {
            let next = match seg {
                Segment::Literal(l) => self.nodes[node].literals.get(&**l).copied(),
                Segment::Param(_) => self.nodes[node].param,
                Segment::Tail(_) => self.nodes[node].tail,
            };
            node = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    let slot = &mut self.nodes[node];
                    match seg {
                        Segment::Literal(l) => {
                            slot.literals.insert(l.clone(), n as u32);
                        }
                        Segment::Param(_) => slot.param = Some(n as u32),
                        Segment::Tail(_) => slot.tail = Some(n as u32),
                    }
                    n
                }
            };
        }
        let mut effective = [false; METHODS.len()];
        for &m in methods {
            effective[m] = true;
        }
        if effective[GET] {
            effective[HEAD] = true;
        }
        let table = &mut self.nodes[node].routes;
        for (m, on) in effective.iter().enumerate() {
            if let (true, Some(existing)) = (*on, table.0[m]) {
                return Err(Conflict {
                    existing,
                    method: METHODS[m],
                });
            }
        }
        for (m, on) in effective.iter().enumerate() {
            if *on {
                table.0[m] = Some(route);
            }
        }
        Ok(())
    }

    /// Finds the most specific pattern matching `path`, which must have passed
    /// [`super::path::check`] (no empty segments, at most 8192 bytes).
    pub fn find(&self, path: &str) -> Option<Found<'_>> {
        let mut captures = Captures::EMPTY;
        let start = if path.len() > 1 { 1 } else { path.len() };
        let node = self.find_at(0, path, start, &mut captures)?;
        Some(Found {
            table: &self.nodes[node].routes,
            captures,
        })
    }

    /// Matches the segments of `path` from byte `pos` (the start of a segment, or the end)
    /// below `node`. Recursion depth is bounded by the trie's depth (MAX_SEGMENTS).
    fn find_at(&self, node: usize, path: &str, pos: usize, caps: &mut Captures) -> Option<usize> {
        let n = &self.nodes[node];
        if pos >= path.len() {
            return (!n.routes.is_empty()).then_some(node);
        }
        let end = path[pos..].find('/').map_or(path.len(), |i| pos + i);
        let next = if end < path.len() { end + 1 } else { end };
        if let Some(&child) = n.literals.get(&path[pos..end]) {
            if let Some(found) = self.find_at(child as usize, path, next, caps) {
                return Some(found);
            }
        }
        if let Some(child) = n.param {
            if caps.len() < MAX_CAPTURES {
                caps.push(pos, end);
                if let Some(found) = self.find_at(child as usize, path, next, caps) {
                    return Some(found);
                }
                caps.pop();
            }
        }
        if let Some(child) = n.tail {
            if caps.len() < MAX_CAPTURES && !self.nodes[child as usize].routes.is_empty() {
                caps.push(pos, path.len());
                return Some(child as usize);
            }
        }
        None
    }
}

// === impl Found ===

impl Found<'_> {
    /// The route allowing `method` (an index into [`METHODS`]) at the matched node.
    pub fn route_for(&self, method: usize) -> Option<u32> {
        self.table.0.get(method).copied().flatten()
    }
}

// === impl MethodTable ===

impl MethodTable {
    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

// === impl FnvHasher ===

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn m(name: &str) -> usize {
        METHODS.iter().position(|x| *x == name).unwrap()
    }

    /// Builds a trie from (pattern, methods) pairs; route index = position.
    fn trie(routes: &[(&str, &[&str])]) -> Trie {
        let mut t = Trie::new();
        for (i, (p, methods)) in routes.iter().enumerate() {
            let ms: Vec<usize> = methods.iter().map(|x| m(x)).collect();
            t.insert(&pat(p), &ms, i as u32).expect("no conflict");
        }
        t
    }

    /// (route, captures) for a GET of `path`.
    fn get(t: &Trie, path: &str) -> Option<(u32, Vec<String>)> {
        let f = t.find(path)?;
        let r = f.route_for(m("GET"))?;
        let caps = (0..f.captures.len())
            .map(|i| f.captures.get(path, i).unwrap().to_owned())
            .collect();
        Some((r, caps))
    }

    #[test]
    fn patterns_parse_into_segments() {
        assert_eq!(
            pat("/Patient/{id}/_history/{vid}").segments(),
            [
                Segment::Literal("Patient".into()),
                Segment::Param("id".into()),
                Segment::Literal("_history".into()),
                Segment::Param("vid".into()),
            ]
        );
        assert_eq!(pat("/").segments(), []);
        assert_eq!(pat("/files/{*path}").shape(), "/files/{*}");
        assert_eq!(
            pat("/Patient/{id}/$everything").shape(),
            "/Patient/{}/$everything"
        );
        assert_eq!(pat("/.well-known/smart-configuration").segments().len(), 2);
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        use PatternError::*;
        for (p, e) in [
            ("Patient", NotAbsolute),
            ("", NotAbsolute),
            ("//Patient", EmptySegment),
            ("/Patient/", EmptySegment),
            ("/a/./b", DotSegment),
            ("/a/..", DotSegment),
            ("/a%2Fb", InvalidCharacter('%')),
            ("/a b", InvalidCharacter(' ')),
            ("/a;b", InvalidCharacter(';')),
            ("/a\\b", InvalidCharacter('\\')),
            ("/é", InvalidCharacter('é')),
            ("/a?b", InvalidCharacter('?')),
            ("/x{id}", PartialParameter),
            ("/{id}x", PartialParameter),
            ("/{Id}", InvalidName("Id".into())),
            ("/{1d}", InvalidName("1d".into())),
            ("/{}", InvalidName("".into())),
            ("/{*}", InvalidName("".into())),
            ("/{a-b}", InvalidName("a-b".into())),
            ("/{id}/{id}", DuplicateName("id".into())),
            ("/{id}/{*id}", DuplicateName("id".into())),
            ("/{*rest}/x", TailNotLast("rest".into())),
        ] {
            assert_eq!(Pattern::parse(p), Err(e), "{p}");
        }
        let long = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(Pattern::parse(&long), Err(TooLong));
    }

    #[test]
    fn literal_beats_param_beats_tail() {
        let t = trie(&[
            ("/Patient/{id}", &["GET"]),
            ("/Patient/_search", &["GET"]),
            ("/Patient/{*rest}", &["GET"]),
        ]);
        assert_eq!(get(&t, "/Patient/_search"), Some((1, vec![])));
        assert_eq!(get(&t, "/Patient/123"), Some((0, vec!["123".into()])));
        assert_eq!(
            get(&t, "/Patient/123/x/y"),
            Some((2, vec!["123/x/y".into()]))
        );
    }

    #[test]
    fn a_dead_end_literal_branch_backtracks_to_the_param_branch() {
        let t = trie(&[
            ("/Patient/{id}/_history", &["GET"]),
            ("/Patient/_search/x", &["GET"]),
        ]);
        // `_search` goes down the literal branch, finds no `_history` there, and backtracks.
        assert_eq!(
            get(&t, "/Patient/_search/_history"),
            Some((0, vec!["_search".into()]))
        );
        assert_eq!(get(&t, "/Patient/_search/x"), Some((1, vec![])));
        assert_eq!(get(&t, "/Patient/_search"), None);
    }

    #[test]
    fn the_most_specific_node_decides_the_method() {
        let t = trie(&[
            ("/Observation/_search", &["POST"]),
            ("/Observation/{id}", &["GET"]),
        ]);
        let f = t.find("/Observation/_search").unwrap();
        assert_eq!(f.route_for(m("POST")), Some(0));
        assert_eq!(f.route_for(m("GET")), None);
    }

    #[test]
    fn tails_need_at_least_one_segment() {
        let t = trie(&[("/files/{*path}", &["GET"])]);
        assert_eq!(get(&t, "/files"), None);
        assert_eq!(get(&t, "/files/a"), Some((0, vec!["a".into()])));
        assert_eq!(get(&t, "/files/a/b/c"), Some((0, vec!["a/b/c".into()])));
    }

    #[test]
    fn literals_are_case_sensitive_and_raw() {
        let t = trie(&[("/Patient/{id}", &["GET"])]);
        assert_eq!(get(&t, "/patient/1"), None);
        assert_eq!(get(&t, "/PATIENT/1"), None);
        assert_eq!(get(&t, "/Patient/a%20b"), Some((0, vec!["a%20b".into()])));
    }

    #[test]
    fn the_root_and_prefixes_match_only_what_is_routed() {
        let t = trie(&[("/", &["POST"]), ("/fhir/metadata", &["GET"])]);
        assert_eq!(t.find("/").unwrap().route_for(m("POST")), Some(0));
        assert!(t.find("/fhir").is_none());
        assert!(t.find("/fhir/metadata/x").is_none());
        assert_eq!(get(&t, "/fhir/metadata"), Some((1, vec![])));
    }

    #[test]
    fn get_routes_also_answer_head() {
        let t = trie(&[("/a", &["GET"]), ("/b", &["HEAD"])]);
        assert_eq!(t.find("/a").unwrap().route_for(m("HEAD")), Some(0));
        assert_eq!(t.find("/b").unwrap().route_for(m("GET")), None);
    }

    #[test]
    fn same_shape_and_method_conflict_regardless_of_param_names() {
        let mut t = trie(&[("/Patient/{id}", &["GET", "PUT"])]);
        assert_eq!(
            t.insert(&pat("/Patient/{pid}"), &[m("DELETE"), m("PUT")], 1),
            Err(Conflict {
                existing: 0,
                method: "PUT"
            })
        );
        // GET implies HEAD, so an explicit HEAD route on the same shape conflicts.
        assert_eq!(
            t.insert(&pat("/Patient/{x}"), &[m("HEAD")], 2),
            Err(Conflict {
                existing: 0,
                method: "HEAD"
            })
        );
        // A failed insert leaves the trie unchanged; other methods are fine.
        assert!(t.insert(&pat("/Patient/{x}"), &[m("DELETE")], 3).is_ok());
        assert_eq!(
            t.find("/Patient/1").unwrap().route_for(m("DELETE")),
            Some(3)
        );
    }

    #[test]
    fn base_paths_prefix_patterns_with_literals_only() {
        let base = pat("/fhir/r4");
        assert_eq!(
            pat("/metadata").prefixed(&base).unwrap().shape(),
            "/fhir/r4/metadata"
        );
        assert_eq!(pat("/").prefixed(&base).unwrap().shape(), "/fhir/r4");
        assert_eq!(
            pat("/x").prefixed(&pat("/{t}")),
            Err(PatternError::ParameterNotAllowed)
        );
    }

    #[test]
    fn matching_cost_does_not_depend_on_sibling_count() {
        let mut t = Trie::new();
        for i in 0..5000u32 {
            t.insert(&pat(&format!("/r{i}/{{id}}")), &[m("GET")], i)
                .unwrap();
        }
        assert_eq!(get(&t, "/r4321/x"), Some((4321, vec!["x".into()])));
        assert_eq!(get(&t, "/r5000/x"), None);
        assert_eq!(t.nodes.len(), 1 + 2 * 5000);
    }
}
