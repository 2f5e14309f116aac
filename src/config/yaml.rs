//! YAML with positions: a small marked node tree and a typed reader that records every
//! problem as a [`Diagnostic`] and keeps going.
//!
//! Why not serde: `serde_yaml` stops at the first error, and checks made after
//! deserialization (route conflicts, scope grammar, cross-field rules) have no position to
//! report. Operators fix files faster when `fhirwall check` lists every problem with
//! `file:line:col` and the key path, so both the configuration and the policy are read here
//! instead: `yaml-rust2` (pure Rust, YAML 1.2, maintained) produces parser events with
//! positions, [`parse`] turns them into [`Node`]s, and [`Reader`] extracts typed values.
//! (`saphyr` offers a marked tree directly but is pre-1.0 with a moving API; building the tree
//! from `yaml-rust2` events is ~100 lines and lets this module refuse duplicate keys, tags
//! and alias bombs itself.)
//!
//! Scalars are typed by the reader, not the parser: a key that wants a string accepts any
//! scalar (`id: 123` is the string `"123"`), a key that wants a boolean accepts only an
//! unquoted `true`/`false`. `null`, `~` and an empty value are null and accepted by no key.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::{Diagnostic, Diagnostics};

/// Most nodes a document may expand to (aliases included); a guard against alias bombs.
const MAX_NODES: usize = 1_000_000;

/// A 1-based position in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One YAML value and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub mark: Mark,
}

/// The shapes a YAML value can have.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `null`, `~`, or nothing.
    Null,
    /// A scalar; `plain` is false when it was quoted or a block scalar.
    Scalar { value: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order. Keys are scalars (enforced by [`parse`]).
    Map(Vec<(Node, Node)>),
}

/// Parses one YAML document. An empty document is `Null` at 1:1.
pub(crate) fn parse(src: &str, file: &Path) -> Result<Node, Diagnostics> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut b, true) {
        let m = e.marker();
        let mut d = Diagnostics::default();
        d.push(Diagnostic::error(
            file,
            m.line(),
            m.col() + 1,
            "",
            format!("YAML syntax error: {}", e.info()),
        ));
        return Err(d);
    }
    if let Some((mark, msg)) = b.error {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::error(file, mark.line, mark.col, "", msg));
        return Err(d);
    }
    Ok(b.root.unwrap_or(Node {
        kind: Kind::Null,
        mark: Mark { line: 1, col: 1 },
    }))
}

/// Builds the tree from parser events.
#[derive(Default)]
struct Builder {
    /// Open containers: the node, and for a mapping a key waiting for its value.
    stack: Vec<(Node, Option<Node>)>,
    anchors: HashMap<usize, Node>,
    /// Anchor id of each open container (0 = none).
    open_anchors: Vec<usize>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    error: Option<(Mark, String)>,
}

impl Builder {
    fn open(
        &mut self,
        kind: Kind,
        mark: Mark,
        anchor: usize,
        tag: Option<yaml_rust2::parser::Tag>,
    ) {
        if tag.is_some() {
            return self.fail(mark, "YAML tags (`!tag`) are not supported");
        }
        self.stack.push((Node { kind, mark }, None));
        self.open_anchors.push(anchor);
    }

    fn fail(&mut self, mark: Mark, msg: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((mark, msg.into()));
        }
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn attach(&mut self, node: Node, weight: usize) {
        self.nodes += weight;
        if self.nodes > MAX_NODES {
            self.fail(
                node.mark,
                "the document is too large (too many nodes after aliases)",
            );
            return;
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((parent, pending_key)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match pending_key.take() {
                    None => {
                        if !matches!(node.kind, Kind::Scalar { .. }) {
                            let mark = node.mark;
                            self.fail(mark, "mapping keys must be plain strings");
                            return;
                        }
                        *pending_key = Some(node);
                    }
                    Some(key) => {
                        // An empty value is reported at its key: the parser marks it at the
                        // next token, which may be lines away.
                        let node = if matches!(node.kind, Kind::Null) {
                            Node {
                                kind: Kind::Null,
                                mark: key.mark,
                            }
                        } else {
                            node
                        };
                        entries.push((key, node));
                    }
                },
                _ => unreachable!("only containers are pushed on the stack"),
            },
        }
    }
}

/// Nodes in a subtree (for the alias-expansion budget).
fn count(node: &Node) -> usize {
    match &node.kind {
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        // yaml-rust2 lines are 1-based, columns 0-based.
        let mark = Mark {
            line: marker.line(),
            col: marker.col() + 1,
        };
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(mark, "expected one YAML document, found several (`---`)");
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    return self.fail(mark, "YAML tags (`!tag`) are not supported");
                }
                let plain = style == TScalarStyle::Plain;
                let kind = if plain && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Kind::Null
                } else {
                    Kind::Scalar { value, plain }
                };
                let node = Node { kind, mark };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.attach(node, 1);
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(Kind::Seq(Vec::new()), mark, anchor, tag)
            }
            Event::MappingStart(anchor, tag) => self.open(Kind::Map(Vec::new()), mark, anchor, tag),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((mut node, _)) = self.stack.pop() else {
                    return;
                };
                // A block mapping's start mark is unreliable; its first key is where it starts.
                if let Kind::Map(entries) = &node.kind {
                    if let Some((k, _)) = entries.first() {
                        node.mark = k.mark;
                    }
                }
                let anchor = self.open_anchors.pop().unwrap_or(0);
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.attach(node, 1);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(node) => {
                    let node = node.clone();
                    let weight = count(&node);
                    self.attach(node, weight);
                }
                None => self.fail(mark, "unknown YAML alias"),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Reads typed values out of a [`Node`] tree, recording every problem and carrying on.
pub(crate) struct Reader<'f> {
    file: &'f Path,
    /// Everything found so far.
    pub diags: Diagnostics,
}

/// A mapping whose keys were checked against the allowed set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapView<'n> {
    /// Where the mapping starts.
    pub mark: Mark,
    entries: &'n [(Node, Node)],
}

/// `a.b`, or `b` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `a[3]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Null => "nothing (null)".to_owned(),
        Kind::Scalar { value, .. } => format!("`{value}`"),
        Kind::Seq(_) => "a list".to_owned(),
        Kind::Map(_) => "a mapping".to_owned(),
    }
}

// === impl Node ===

impl Node {
    /// The scalar text, if this is a scalar.
    pub(crate) fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }
}

// === impl MapView ===

impl<'n> MapView<'n> {
    /// The value of `key`, if present (null values included).
    pub(crate) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// Where `key` is written, if present.
    pub(crate) fn key_mark(&self, key: &str) -> Option<Mark> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_scalar() == Some(key))
            .map(|(k, _)| k.mark)
    }
}

// === impl Reader ===

impl<'f> Reader<'f> {
    pub(crate) fn new(file: &'f Path) -> Self {
        Reader {
            file,
            diags: Diagnostics::default(),
        }
    }

    /// Records an error about the value at `key`.
    pub(crate) fn error(&mut self, mark: Mark, key: &str, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, mark.line, mark.col, key, msg));
    }

    /// Records a warning about the value at `key`.
    pub(crate) fn warning(&mut self, mark: Mark, key: &str, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(
            self.file, mark.line, mark.col, key, msg,
        ));
    }

    /// True when an error has been recorded.
    pub(crate) fn has_errors(&self) -> bool {
        self.diags.has_errors()
    }

    /// A mapping with only `allowed` keys, each at most once. Unknown and duplicate keys are
    /// reported (the rest of the mapping is still returned, so its other problems are found).
    pub(crate) fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<MapView<'n>> {
        let Kind::Map(entries) = &node.kind else {
            let msg = format!("expected a mapping, found {}", describe(node));
            self.error(node.mark, path, msg);
            return None;
        };
        for (i, (k, _)) in entries.iter().enumerate() {
            let name = k.as_scalar().unwrap_or_default();
            if let Some((first, _)) = entries[..i]
                .iter()
                .find(|(p, _)| p.as_scalar() == Some(name))
            {
                let msg = format!("duplicate key `{name}` (first at line {})", first.mark.line);
                self.error(k.mark, &join(path, name), msg);
            } else if !allowed.contains(&name) {
                let msg = unknown_key_message(name, allowed);
                self.error(k.mark, &join(path, name), msg);
            }
        }
        Some(MapView {
            mark: node.mark,
            entries,
        })
    }

    /// The value of a required key; reports it missing at the mapping.
    pub(crate) fn required<'n>(
        &mut self,
        map: &MapView<'n>,
        path: &str,
        key: &str,
    ) -> Option<&'n Node> {
        let v = map.get(key);
        if v.is_none() {
            self.error(
                map.mark,
                &join(path, key),
                format!("missing required key `{key}`"),
            );
        }
        v
    }

    /// A list.
    pub(crate) fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                let msg = format!("expected a list, found {}", describe(node));
                self.error(node.mark, path, msg);
                None
            }
        }
    }

    /// A string: any scalar, quoted or not.
    pub(crate) fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match &node.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => {
                let msg = format!("expected a string, found {}", describe(node));
                self.error(node.mark, path, msg);
                None
            }
        }
    }

    /// An unquoted `true` or `false` (YAML 1.2 core schema spellings).
    pub(crate) fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        if let Kind::Scalar { value, plain: true } = &node.kind {
            match value.as_str() {
                "true" | "True" | "TRUE" => return Some(true),
                "false" | "False" | "FALSE" => return Some(false),
                _ => {}
            }
        }
        let msg = format!("expected `true` or `false`, found {}", describe(node));
        self.error(node.mark, path, msg);
        None
    }

    /// A non-negative decimal integer.
    pub(crate) fn u64(&mut self, node: &Node, path: &str) -> Option<u64> {
        if let Kind::Scalar { value, plain: true } = &node.kind {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = value.parse() {
                    return Some(n);
                }
            }
        }
        let msg = format!("expected a non-negative integer, found {}", describe(node));
        self.error(node.mark, path, msg);
        None
    }

    /// A duration written as an integer and a unit: `250ms`, `30s`, `5m`, `1h`.
    pub(crate) fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let parsed = node.as_scalar().and_then(parse_duration);
        if parsed.is_none() {
            let msg = format!(
                "expected a duration with a unit (`ms`, `s`, `m`, `h`), e.g. `30s`, found {}",
                describe(node)
            );
            self.error(node.mark, path, msg);
        }
        parsed
    }

    /// A list of strings, each with its node (for positions).
    pub(crate) fn strings<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let items = self.seq(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &index(path, i)) {
                Some(s) => out.push((s, item)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = if n.is_empty() {
        return None;
    } else {
        n.parse().ok()?
    };
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(Duration::from_millis(millis))
}

fn unknown_key_message(name: &str, allowed: &[&str]) -> String {
    let close = allowed
        .iter()
        .filter(|a| edit_distance(name, a) <= 2)
        .min_by_key(|a| edit_distance(name, a));
    match close {
        Some(c) => format!("unknown key `{name}`; did you mean `{c}`?"),
        None => format!(
            "unknown key `{name}`; expected one of: {}",
            allowed.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Node {
        parse(src, Path::new("t.yaml")).expect("parses")
    }

    fn err(src: &str) -> Diagnostic {
        parse(src, Path::new("t.yaml"))
            .expect_err("fails")
            .0
            .remove(0)
    }

    #[test]
    fn nodes_carry_one_based_lines_and_columns() {
        let root = p("a: 1\nlist:\n  - x\n  - {k: v}\n");
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(root.mark, Mark { line: 1, col: 1 });
        assert_eq!(entries[0].1.mark, Mark { line: 1, col: 4 });
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].mark, Mark { line: 3, col: 5 });
        assert_eq!(items[1].mark, Mark { line: 4, col: 6 });
    }

    #[test]
    fn empty_values_are_null_and_marked_at_their_key() {
        let root = p("a:\nb: ~\nc: 'null'\n");
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert!(matches!(entries[0].1.kind, Kind::Null));
        assert_eq!(entries[0].1.mark, Mark { line: 1, col: 1 });
        assert!(matches!(entries[1].1.kind, Kind::Null));
        assert!(
            matches!(&entries[2].1.kind, Kind::Scalar { value, plain: false } if value == "null")
        );
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let d = err("a: 1\nb: [1, 2\nc: 3\n");
        assert_eq!((d.line, d.col), (3, 2));
        assert!(
            d.message.starts_with("YAML syntax error: "),
            "{}",
            d.message
        );
    }

    #[test]
    fn several_documents_tags_and_unknown_aliases_are_refused() {
        assert_eq!(
            err("a: 1\n---\nb: 2\n").message,
            "expected one YAML document, found several (`---`)"
        );
        assert_eq!(
            err("a: !!str 1\n").message,
            "YAML tags (`!tag`) are not supported"
        );
        assert_eq!(
            err("a: [1]\nb: {[x]: 1}\n").message,
            "mapping keys must be plain strings"
        );
    }

    #[test]
    fn aliases_expand_to_copies_of_the_anchored_node() {
        let root = p("a: &x [1, 2]\nb: *x\n");
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert!(matches!(&entries[1].1.kind, Kind::Seq(items) if items.len() == 2));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(err(&src).message.contains("too many nodes"));
    }

    #[test]
    fn unknown_and_duplicate_keys_are_all_reported() {
        let root = p("nme: x\nname: y\nname: z\nzzz: 1\n");
        let mut r = Reader::new(Path::new("t.yaml"));
        let m = r.map(&root, "top", &["name", "other"]).unwrap();
        assert_eq!(m.get("name").and_then(Node::as_scalar), Some("y"));
        let msgs: Vec<_> = r
            .diags
            .0
            .iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.col, d.key, d.message))
            .collect();
        assert_eq!(
            msgs,
            [
                "1:1 top.nme unknown key `nme`; did you mean `name`?",
                "3:1 top.name duplicate key `name` (first at line 2)",
                "4:1 top.zzz unknown key `zzz`; expected one of: name, other",
            ]
        );
    }

    #[test]
    fn typed_reads_report_what_they_found() {
        let root = p("b: yes\nq: 'true'\nn: -1\nd: 5\nl: x\ns: [1]\n");
        let mut r = Reader::new(Path::new("t.yaml"));
        let m = r.map(&root, "", &["b", "q", "n", "d", "l", "s"]).unwrap();
        assert_eq!(r.bool(m.get("b").unwrap(), "b"), None);
        assert_eq!(r.bool(m.get("q").unwrap(), "q"), None);
        assert_eq!(r.u64(m.get("n").unwrap(), "n"), None);
        assert_eq!(r.duration(m.get("d").unwrap(), "d"), None);
        assert!(r.seq(m.get("l").unwrap(), "l").is_none());
        assert!(r.string(m.get("s").unwrap(), "s").is_none());
        let msgs: Vec<_> = r.diags.0.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "expected `true` or `false`, found `yes`",
                "expected `true` or `false`, found `true`",
                "expected a non-negative integer, found `-1`",
                "expected a duration with a unit (`ms`, `s`, `m`, `h`), e.g. `30s`, found `5`",
                "expected a list, found `x`",
                "expected a string, found a list",
            ]
        );
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "1 s",
            "1S",
            "1d",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_required_keys_are_reported_at_the_mapping() {
        let root = p("\n\nother: 1\n");
        let mut r = Reader::new(Path::new("t.yaml"));
        let m = r.map(&root, "x", &["other", "name"]).unwrap();
        assert!(r.required(&m, "x", "name").is_none());
        let d = &r.diags.0[0];
        assert_eq!((d.line, d.col, d.key.as_str()), (3, 1, "x.name"));
        assert_eq!(d.message, "missing required key `name`");
    }
}
