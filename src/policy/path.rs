//! Path safety: refuse any request path that could mean one thing to fhirwall and another to
//! the backend.
//!
//! fhirwall matches the raw path and forwards the same bytes, unchanged. That is only sound if
//! no component between the client and the data (fhirwall's trie, a servlet container, a
//! framework router, a normalizing load balancer) can read the path differently. So instead
//! of normalizing, [`check`] refuses every form that has more than one reading: dot segments,
//! empty segments, path parameters, backslashes, and percent-encodings that a decoder would
//! turn into a delimiter, a control character, a byte fhirwall cannot compare, or a character
//! that must never be encoded (SMART-SEMANTICS §12, RFC 3986 §2.3, §3.3, §6.2.2).
//!
//! The check is a single pass over the bytes with no allocation; it runs on every request
//! before the route is looked up.

/// Longest path accepted, in bytes. Longer paths are refused rather than truncated.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path was refused. Every variant is answered with `400 Bad Request`; the
/// [`Display`](std::fmt::Display) text becomes the OperationOutcome diagnostics, so it names
/// the problem without echoing the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRejected {
    /// The path does not start with `/` (empty, `*`, or an absolute URI).
    #[error("the request path must start with `/`")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("the request path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// A raw byte outside ASCII (UTF-8 text must be percent-encoded, and then it is refused
    /// as [`PathRejected::EncodedNonAscii`]).
    #[error("the request path contains a non-ASCII character")]
    NonAscii,
    /// A raw control character (0x00-0x1F, 0x7F) or a space.
    #[error("the request path contains a control character or a space")]
    ControlOrSpace,
    /// A raw `;`: path parameters (`/Patient;x=1/123`) are stripped by some servers before
    /// routing and kept by others.
    #[error("the request path contains `;` (path parameters are not accepted)")]
    PathParameter,
    /// A raw `\`, which some servers treat as `/`.
    #[error("the request path contains a backslash")]
    Backslash,
    /// Another byte that RFC 3986 does not allow in a path (`"`, `<`, `>`, `[`, `]`, `^`,
    /// `` ` ``, `{`, `|`, `}`, `#`, `?`).
    #[error("the request path contains `{0}`, which is not allowed in a URL path (RFC 3986 §3.3)")]
    ForbiddenCharacter(char),
    /// Two consecutive slashes: an empty segment, collapsed by some servers.
    #[error("the request path contains an empty segment (`//`)")]
    EmptySegment,
    /// A `/` at the end of a path other than `/`: `Patient/123/` is `Patient/123` to some
    /// servers and a different resource to others.
    #[error("the request path ends with `/`")]
    TrailingSlash,
    /// A `.` or `..` segment, which RFC 3986 §5.2.4 removes.
    #[error("the request path contains a `.` or `..` segment")]
    DotSegment,
    /// A `%` not followed by two hexadecimal digits.
    #[error("the request path contains `%` not followed by two hexadecimal digits")]
    InvalidPercentEncoding,
    /// `%2F`: an encoded `/` is a segment delimiter to servers that decode before routing.
    #[error("the request path contains an encoded `/` (%2F)")]
    EncodedSlash,
    /// `%5C`: an encoded `\`.
    #[error("the request path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    /// `%2E`: an encoded `.`, the classic way to smuggle a dot segment (`%2e%2e`).
    #[error("the request path contains an encoded `.` (%2E)")]
    EncodedDot,
    /// `%25`: an encoded `%`, which a server that decodes twice turns into a new escape
    /// (`%252F` -> `%2F` -> `/`).
    #[error("the request path contains an encoded `%` (%25)")]
    EncodedPercent,
    /// `%00`-`%1F` or `%7F`: an encoded control character (NUL truncates paths in C code).
    #[error("the request path contains an encoded control character")]
    EncodedControl,
    /// `%80`-`%FF`: encoded non-ASCII, which a server may decode to a look-alike of another
    /// path (full-width letters fold to ASCII under NFKC).
    #[error("the request path contains an encoded non-ASCII byte")]
    EncodedNonAscii,
    /// An encoded unreserved character (`%50` for `P`, `%34` for `4`): RFC 3986 §2.3 says they
    /// must not be encoded and normalizers decode them, so `/%50atient/%34%35%36` would be
    /// `/Patient/456` to the backend but not to fhirwall.
    #[error("the request path percent-encodes `{0}`, which must be written as is (RFC 3986 §2.3)")]
    EncodedUnreserved(char),
}

/// Accepts `path` only if it has exactly one reading: what fhirwall matches is what the
/// backend receives. `path` is the raw request path, without the query.
///
/// Allowed: `/` followed by non-empty segments of RFC 3986 `pchar`s (unreserved, sub-delims
/// except `;`, `:`, `@`) and `%XX` escapes of reserved or other printable ASCII characters
/// (e.g. `%20`, `%3A`); the path `/` itself. Everything else is refused with the reason.
pub fn check(path: &str) -> Result<(), PathRejected> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRejected::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathRejected::TooLong);
    }
    if bytes == b"/" {
        return Ok(());
    }

    // `seg_start` is the index just after the `/` that opened the current segment.
    let mut seg_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                check_segment(&bytes[seg_start..i])?;
                seg_start = i + 1;
            }
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (hex(h), hex(l)),
                    _ => (None, None),
                };
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathRejected::InvalidPercentEncoding);
                };
                check_escape(hi << 4 | lo)?;
                i += 3;
                continue;
            }
            _ => check_raw(b)?,
        }
        i += 1;
    }
    // The last segment: empty means the path ended with `/`.
    if seg_start == bytes.len() {
        return Err(PathRejected::TrailingSlash);
    }
    check_segment(&bytes[seg_start..])
}

/// Refuses empty and dot segments. Called once per segment, at its end.
fn check_segment(seg: &[u8]) -> Result<(), PathRejected> {
    match seg {
        b"" => Err(PathRejected::EmptySegment),
        b"." | b".." => Err(PathRejected::DotSegment),
        _ => Ok(()),
    }
}

/// Classifies one raw (unencoded) byte other than `/` and `%`.
fn check_raw(b: u8) -> Result<(), PathRejected> {
    match b {
        // RFC 3986 §2.3 unreserved.
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Ok(()),
        // RFC 3986 §2.2 sub-delims, except `;` below, and the two other pchar delimiters.
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
            Ok(())
        }
        b';' => Err(PathRejected::PathParameter),
        b'\\' => Err(PathRejected::Backslash),
        0x00..=0x20 | 0x7f => Err(PathRejected::ControlOrSpace),
        0x80..=0xff => Err(PathRejected::NonAscii),
        other => Err(PathRejected::ForbiddenCharacter(char::from(other))),
    }
}

/// Classifies one decoded `%XX` byte.
fn check_escape(b: u8) -> Result<(), PathRejected> {
    match b {
        b'/' => Err(PathRejected::EncodedSlash),
        b'\\' => Err(PathRejected::EncodedBackslash),
        b'.' => Err(PathRejected::EncodedDot),
        b'%' => Err(PathRejected::EncodedPercent),
        0x00..=0x1f | 0x7f => Err(PathRejected::EncodedControl),
        0x80..=0xff => Err(PathRejected::EncodedNonAscii),
        // RFC 3986 §2.3: "should not be created by URI producers"; §6.2.2.2 normalizers decode.
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => {
            Err(PathRejected::EncodedUnreserved(char::from(b)))
        }
        // Reserved characters and other printable ASCII are data when encoded (`%20`, `%3B`,
        // `%3F`): they stay inside their segment for every decoder.
        _ => Ok(()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::PathRejected::*;
    use super::*;

    #[track_caller]
    fn ok(path: &str) {
        assert_eq!(check(path), Ok(()), "{path:?} should be accepted");
    }

    #[track_caller]
    fn refused(path: &str, why: PathRejected) {
        assert_eq!(check(path), Err(why), "{path:?}");
    }

    #[test]
    fn ordinary_fhir_paths_are_accepted() {
        for p in [
            "/",
            "/metadata",
            "/fhir/Patient/123",
            "/fhir/Patient/123/_history/2",
            "/fhir/Patient/123/$everything",
            "/fhir/.well-known/smart-configuration",
            "/fhir/Observation/a.b-c_d~e",
            "/fhir/Patient/...",
            "/fhir/Binary/x:y@z!$&'()*+,=",
            "/api/v1/reports/2024%20Q1",
            "/api/v1/notes/a%3Bb",
            "/api/v1/q/a%3Fb%23c",
            "/x/%7B%7D%22%3C%3E%5B%5D%5E%60%7C%20",
        ] {
            ok(p);
        }
    }

    #[test]
    fn paths_not_starting_with_a_slash_are_refused() {
        refused("", NotAbsolute);
        refused("Patient/123", NotAbsolute);
        refused("*", NotAbsolute);
        refused("http://evil/Patient", NotAbsolute);
        refused("%2FPatient", NotAbsolute);
    }

    #[test]
    fn paths_longer_than_the_limit_are_refused() {
        let max = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        ok(&max);
        let over = format!("/{}", "a".repeat(MAX_PATH_LEN));
        refused(&over, TooLong);
    }

    #[test]
    fn non_ascii_characters_are_refused() {
        // Full-width P folds to P under NFKC; Cyrillic а looks like a.
        refused("/fhir/\u{FF30}atient/123", NonAscii);
        refused("/fhir/P\u{0430}tient/123", NonAscii);
        refused("/fhir/Patient/é", NonAscii);
    }

    #[test]
    fn control_characters_and_spaces_are_refused() {
        refused("/fhir/Patient/1 2", ControlOrSpace);
        refused("/fhir/Patient/1\t", ControlOrSpace);
        refused("/fhir/Patient/1\0", ControlOrSpace);
        refused("/fhir/Patient/1\r\nX: y", ControlOrSpace);
        refused("/fhir/Patient/1\x7f", ControlOrSpace);
    }

    #[test]
    fn characters_outside_the_path_grammar_are_refused() {
        for (p, c) in [
            ("/a\"b", '"'),
            ("/a<b", '<'),
            ("/a>b", '>'),
            ("/a[b", '['),
            ("/a]b", ']'),
            ("/a^b", '^'),
            ("/a`b", '`'),
            ("/a{b", '{'),
            ("/a|b", '|'),
            ("/a}b", '}'),
            ("/a#b", '#'),
            ("/a?b", '?'),
        ] {
            refused(p, ForbiddenCharacter(c));
        }
    }

    #[test]
    fn path_parameters_are_refused() {
        refused("/fhir/Patient;x=1/123", PathParameter);
        refused("/fhir/Patient/123;jsessionid=abc", PathParameter);
        refused("/fhir/Patient/..;/Observation", PathParameter);
    }

    #[test]
    fn backslashes_are_refused() {
        refused("/fhir/Patient\\123", Backslash);
        refused("/fhir\\..\\admin", Backslash);
    }

    #[test]
    fn empty_segments_are_refused() {
        refused("//fhir/Patient", EmptySegment);
        refused("/fhir//Patient/123", EmptySegment);
        refused("/fhir/Patient//", EmptySegment);
    }

    #[test]
    fn trailing_slashes_are_refused_except_on_the_root() {
        ok("/");
        refused("/fhir/", TrailingSlash);
        refused("/fhir/Patient/123/", TrailingSlash);
    }

    #[test]
    fn dot_segments_are_refused() {
        refused("/.", DotSegment);
        refused("/..", DotSegment);
        refused("/fhir/./Patient", DotSegment);
        refused("/fhir/Patient/..", DotSegment);
        refused("/fhir/Patient/../Observation/1", DotSegment);
        refused("/fhir/Patient/123/.", DotSegment);
        // Dots inside a segment are ordinary characters.
        ok("/fhir/.well-known/x");
        ok("/fhir/Patient/a..b");
    }

    #[test]
    fn invalid_percent_encoding_is_refused() {
        refused("/fhir/Patient/%", InvalidPercentEncoding);
        refused("/fhir/Patient/%4", InvalidPercentEncoding);
        refused("/fhir/Patient/%G0", InvalidPercentEncoding);
        refused("/fhir/Patient/%0G", InvalidPercentEncoding);
        refused("/fhir/Patient/%%41", InvalidPercentEncoding);
        refused("/fhir/Patient/%-1", InvalidPercentEncoding);
    }

    #[test]
    fn encoded_delimiters_and_dots_are_refused_in_either_case() {
        refused("/fhir/Patient%2F123", EncodedSlash);
        refused("/fhir/Patient%2f123", EncodedSlash);
        refused("/fhir/Patient%5C123", EncodedBackslash);
        refused("/fhir/Patient%5c123", EncodedBackslash);
        refused("/fhir/Patient/%2e%2e/Observation", EncodedDot);
        refused("/fhir/Patient/%2E", EncodedDot);
        refused("/fhir/Patient/.%2e", EncodedDot);
        refused("/fhir/Patient/%252F", EncodedPercent);
        refused("/fhir/%252e%252e/admin", EncodedPercent);
    }

    #[test]
    fn encoded_control_characters_are_refused() {
        refused("/fhir/Patient/123%00.json", EncodedControl);
        refused("/fhir/Patient/123%0d%0aX:%20y", EncodedControl);
        refused("/fhir/Patient/123%1F", EncodedControl);
        refused("/fhir/Patient/123%7f", EncodedControl);
    }

    #[test]
    fn encoded_non_ascii_is_refused() {
        // UTF-8 of full-width P (EF BC B0) and of Cyrillic а (D0 B0).
        refused("/fhir/%EF%BC%B0atient/123", EncodedNonAscii);
        refused("/fhir/P%D0%B0tient/123", EncodedNonAscii);
        refused("/fhir/Patient/%80", EncodedNonAscii);
        refused("/fhir/Patient/%ff", EncodedNonAscii);
    }

    #[test]
    fn encoded_unreserved_characters_are_refused() {
        refused("/fhir/%50atient/456", EncodedUnreserved('P'));
        refused("/fhir/Patient/%34%35%36", EncodedUnreserved('4'));
        refused("/fhir/Patient/%61", EncodedUnreserved('a'));
        refused("/fhir/Patient/a%2Db", EncodedUnreserved('-'));
        refused("/fhir/Patient/a%5fb", EncodedUnreserved('_'));
        refused("/fhir/Patient/a%7Eb", EncodedUnreserved('~'));
    }

    #[test]
    fn encoded_reserved_and_other_printable_characters_are_data() {
        for p in [
            "/x/%20", "/x/%21", "/x/%22", "/x/%23", "/x/%24", "/x/%26", "/x/%27", "/x/%28",
            "/x/%29", "/x/%2A", "/x/%2B", "/x/%2C", "/x/%3A", "/x/%3B", "/x/%3C", "/x/%3D",
            "/x/%3E", "/x/%3F", "/x/%40", "/x/%5B", "/x/%5D", "/x/%5E", "/x/%60", "/x/%7B",
            "/x/%7C", "/x/%7D",
        ] {
            ok(p);
        }
    }

    #[test]
    fn the_first_problem_from_the_left_is_reported() {
        refused("/a//b/..", EmptySegment);
        refused("/a/../b//", DotSegment);
        refused("/a;b/%2F", PathParameter);
    }

    #[test]
    fn messages_are_readable_and_do_not_echo_the_path() {
        assert_eq!(
            EncodedUnreserved('P').to_string(),
            "the request path percent-encodes `P`, which must be written as is (RFC 3986 §2.3)"
        );
        assert_eq!(
            DotSegment.to_string(),
            "the request path contains a `.` or `..` segment"
        );
        assert_eq!(
            TooLong.to_string(),
            "the request path is longer than 8192 bytes"
        );
    }
}
