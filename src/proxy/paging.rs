//! Paging: next-page links carry no resource type (HAPI: `[base]?_getpages=...`), so a page
//! request is authorized exactly as the search that produced it (issue 3 "Paging";
//! SMART-SEMANTICS A22).
//!
//! When the engine marks a search `remember_pages`, the proxy copies at most the first
//! [`SCAN_PREFIX`] bytes of the response as it streams past (nothing is held back), finds the
//! Bundle's top-level `link` array there (FHIR JSON writes `link` before `entry`, R4
//! bundle.html), and remembers every `self`/`first`/`previous`/`prev`/`next`/`last` link that
//! points under the FHIR base: its path and query -> the original search and who made it.
//! A later request for exactly that path and query is decided by the engine as the original
//! search, with the caller's current token. Links found only beyond the prefix are not
//! remembered (such a page request is then refused as an unknown page link).
//!
//! A remembered link serves the same client for the same user and patient (issuer,
//! `client_id`, `sub`, patient context): a refreshed token continues the paging, another
//! app or user presenting the URL does not.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Principal;

/// How much of a search response is copied to look for its links.
pub const SCAN_PREFIX: usize = 64 * 1024;

/// Longest original query remembered (a `_search` form folded into the query included).
const MAX_REMEMBERED_QUERY: usize = 8 * 1024;

/// Link relations that lead to a page of the same search (R4 bundle.html "link").
const PAGE_RELATIONS: [&str; 6] = ["self", "first", "previous", "prev", "next", "last"];

/// The search a page link belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// The search's path (`/fhir/Observation`; a `POST .../_search` is remembered as the
    /// equivalent `GET`, R4 search.html "the server SHALL treat them the same").
    pub path: Box<str>,
    /// The search's query, without `?`.
    pub query: Option<Box<str>>,
    /// Who ran it.
    owner: Owner,
}

/// The caller a link is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    issuer: Arc<str>,
    client_id: Option<Arc<str>>,
    subject: Option<Arc<str>>,
    patient: Option<Arc<str>>,
}

/// Remembered page links, bounded in count and age (`fhir.paging.max_links`, `ttl`).
pub struct PageStore {
    links: moka::sync::Cache<Box<str>, Arc<Remembered>>,
}

/// Copies the start of a response body for [`scan_links`], never more than [`SCAN_PREFIX`].
#[derive(Debug, Default)]
pub struct PrefixCopy {
    buf: Vec<u8>,
}

// === impl Remembered ===

impl Remembered {
    /// The search as it is remembered: a `POST [type]/_search` with a form body becomes the
    /// `GET [type]?query&form` it is equivalent to. `None` when it cannot be remembered
    /// (no caller, a body that is not a form, or a query too long to keep).
    pub fn of_search(
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: Option<&[u8]>,
        principal: Option<&Principal>,
    ) -> Option<Remembered> {
        let owner = Owner::of(principal?);
        let (path, query) = if method == http::Method::POST {
            let path = path.strip_suffix("/_search")?;
            let form = content_type
                .and_then(|c| c.split(';').next())
                .is_some_and(|m| {
                    m.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                });
            if !form {
                return None;
            }
            let body = std::str::from_utf8(body.unwrap_or_default()).ok()?.trim();
            let joined = [query.unwrap_or(""), body]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("&");
            (path, (!joined.is_empty()).then_some(joined))
        } else {
            (path, query.map(str::to_owned))
        };
        if query
            .as_ref()
            .is_some_and(|q| q.len() > MAX_REMEMBERED_QUERY)
        {
            return None;
        }
        Some(Remembered {
            path: path.into(),
            query: query.map(String::into_boxed_str),
            owner,
        })
    }

    /// Whether `principal` may continue this search.
    pub fn belongs_to(&self, principal: &Principal) -> bool {
        self.owner == Owner::of(principal)
    }
}

// === impl Owner ===

impl Owner {
    fn of(p: &Principal) -> Owner {
        Owner {
            issuer: p.issuer.clone(),
            client_id: p.client_id.clone(),
            subject: p.subject.clone(),
            patient: p.patient.clone(),
        }
    }
}

// === impl PageStore ===

impl PageStore {
    /// An empty store keeping at most `max_links` links, each for `ttl` after it was seen.
    pub fn new(ttl: Duration, max_links: u64) -> Self {
        PageStore {
            links: moka::sync::Cache::builder()
                .max_capacity(max_links)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Remembers `links` (path and query, see [`page_key`]) as pages of `search`.
    pub fn remember(&self, links: impl IntoIterator<Item = String>, search: &Arc<Remembered>) {
        for link in links {
            self.links.insert(link.into_boxed_str(), search.clone());
        }
    }

    /// The search a request's path and query (`/fhir?_getpages=x`) is a page of.
    pub fn lookup(&self, path: &str, query: Option<&str>) -> Option<Arc<Remembered>> {
        match query {
            Some(q) => self.links.get(format!("{path}?{q}").as_str()),
            None => self.links.get(path),
        }
    }
}

// === impl PrefixCopy ===

impl PrefixCopy {
    /// Copies what still fits of `chunk`.
    pub fn push(&mut self, chunk: &[u8]) {
        let room = SCAN_PREFIX.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The bytes copied so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The page links (relation, URL) of the Bundle whose JSON starts with `prefix`: the
/// members of its top-level `link` array with a page relation. Empty when the array is not
/// complete within `prefix` or the JSON is not a Bundle object.
pub fn scan_links(prefix: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Link {
        #[serde(default)]
        relation: Option<String>,
        #[serde(default)]
        url: Option<String>,
    }
    let Some(array) = top_level_member(prefix, b"link") else {
        return Vec::new();
    };
    let Ok(links) = serde_json::from_slice::<Vec<Link>>(array) else {
        return Vec::new();
    };
    links
        .into_iter()
        .filter_map(|l| Some((l.relation?, l.url?)))
        .filter(|(rel, _)| PAGE_RELATIONS.contains(&rel.as_str()))
        .collect()
}

/// The path and query a link URL asks for, when it is under the FHIR base: absolute URLs
/// of any scheme and host (the backend may not know the gateway's public address), a
/// path-absolute URL, or a URL relative to the base (R4 http.html "relative to the base").
pub fn page_key(url: &str, base_path: &str) -> Option<String> {
    let url = url.split('#').next().unwrap_or("");
    let target = if let Some((_, rest)) = url.split_once("://") {
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].to_owned(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_owned(),
        }
    } else if url.starts_with('/') {
        if url.starts_with("//") {
            return None;
        }
        url.to_owned()
    } else if url.starts_with('?') {
        format!("{base_path}{url}")
    } else {
        format!("{base_path}/{url}")
    };
    let path = target.split('?').next().unwrap_or("");
    let under = base_path.is_empty()
        || path == base_path
        || path
            .strip_prefix(base_path)
            .is_some_and(|r| r.starts_with('/'));
    under.then_some(target)
}

/// The raw JSON of member `name` of the top-level object in `buf`, if it is complete.
fn top_level_member<'a>(buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(buf, i);
        match buf.get(i)? {
            b'}' => return None,
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(buf, i)?;
        let key = &buf[i + 1..key_end - 1];
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(buf, i + 1);
        let value_end = skip_value(buf, i)?;
        if key == name {
            return Some(&buf[i..value_end]);
        }
        i = skip_ws(buf, value_end);
        match buf.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        i += 1;
    }
    i
}

/// The index after the string starting at `buf[i] == '"'`.
fn skip_string(buf: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match buf.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index after the JSON value starting at `buf[i]`; `None` when it is cut off.
fn skip_value(buf: &[u8], i: usize) -> Option<usize> {
    match buf.get(i)? {
        b'"' => skip_string(buf, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match buf.get(j)? {
                    b'"' => {
                        j = skip_string(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            // A number, true, false or null: ends at a delimiter (cut off when none follows).
            let mut j = i;
            while !matches!(
                buf.get(j)?,
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'
            ) {
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::scope::GrantedScopes;

    fn principal(client: &str, patient: &str) -> Principal {
        Principal {
            issuer: "https://idp".into(),
            subject: Some("u1".into()),
            client_id: Some(client.into()),
            fhir_user: None,
            patient: Some(patient.into()),
            jti: None,
            expires_at: 0,
            scopes: GrantedScopes::default(),
        }
    }

    const BUNDLE: &str = r#"{"resourceType":"Bundle","id":"x","meta":{"tag":[{"code":"a]}"}]},"type":"searchset","total":40,
      "link":[{"relation":"self","url":"http://ehr:8080/fhir/Observation?patient=123&_count=10"},
              {"relation":"next","url":"https://gw.example/fhir?_getpages=abc&_getpagesoffset=10&_count=10"},
              {"relation":"alternate","url":"https://gw.example/fhir/other"}],
      "entry":[{"link":[{"relation":"next","url":"/fhir?_getpages=evil"}],"resource":{}}]}"#;

    #[test]
    fn page_links_are_found_in_the_bundle_link_array_only() {
        let links = scan_links(BUNDLE.as_bytes());
        let rels: Vec<&str> = links.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["self", "next"]);
        assert!(links.iter().all(|(_, u)| !u.contains("evil")));
    }

    #[test]
    fn links_cut_off_by_the_prefix_are_not_found() {
        let cut = &BUNDLE.as_bytes()[..BUNDLE.find("alternate").unwrap()];
        assert!(scan_links(cut).is_empty());
        assert!(scan_links(b"[1,2]").is_empty());
        assert!(scan_links(b"{\"a\":tru").is_empty());
    }

    #[test]
    fn the_prefix_copy_stops_at_its_bound() {
        let mut p = PrefixCopy::default();
        p.push(&vec![b'x'; SCAN_PREFIX - 10]);
        p.push(&[b'y'; 100]);
        assert_eq!(p.bytes().len(), SCAN_PREFIX);
    }

    #[test]
    fn links_under_the_base_keep_path_and_query_whatever_the_host() {
        assert_eq!(
            page_key("https://gw.example/fhir?_getpages=abc&x=1#frag", "/fhir").as_deref(),
            Some("/fhir?_getpages=abc&x=1")
        );
        assert_eq!(
            page_key("/fhir/Observation?page=2", "/fhir").as_deref(),
            Some("/fhir/Observation?page=2")
        );
        assert_eq!(
            page_key("Observation?page=2", "/fhir").as_deref(),
            Some("/fhir/Observation?page=2")
        );
        assert_eq!(
            page_key("http://h?_getpages=1", "").as_deref(),
            Some("/?_getpages=1")
        );
    }

    #[test]
    fn links_outside_the_base_are_not_remembered() {
        assert_eq!(
            page_key("https://gw.example/fhirx?_getpages=a", "/fhir"),
            None
        );
        assert_eq!(page_key("https://gw.example/admin?x", "/fhir"), None);
        assert_eq!(page_key("//evil.example/fhir?x", "/fhir"), None);
    }

    #[test]
    fn a_post_search_is_remembered_as_the_equivalent_get() {
        let p = principal("app", "123");
        let r = Remembered::of_search(
            &http::Method::POST,
            "/fhir/Observation/_search",
            Some("_count=10"),
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            Some(b"patient=123"),
            Some(&p),
        )
        .unwrap();
        assert_eq!(&*r.path, "/fhir/Observation");
        assert_eq!(r.query.as_deref(), Some("_count=10&patient=123"));
    }

    #[test]
    fn a_remembered_link_belongs_to_the_same_client_user_and_patient() {
        let p = principal("app", "123");
        let search = Arc::new(
            Remembered::of_search(
                &http::Method::GET,
                "/fhir/Observation",
                Some("patient=123"),
                None,
                None,
                Some(&p),
            )
            .unwrap(),
        );
        let store = PageStore::new(Duration::from_secs(60), 100);
        store.remember(["/fhir?_getpages=abc".to_owned()], &search);
        let found = store.lookup("/fhir", Some("_getpages=abc")).unwrap();
        assert!(found.belongs_to(&p));
        assert!(!found.belongs_to(&principal("other-app", "123")));
        assert!(!found.belongs_to(&principal("app", "456")));
        assert!(store.lookup("/fhir", Some("_getpages=abd")).is_none());
    }

    #[test]
    fn a_search_without_a_caller_is_not_remembered() {
        assert!(
            Remembered::of_search(&http::Method::GET, "/fhir/Patient", None, None, None, None)
                .is_none()
        );
    }
}
