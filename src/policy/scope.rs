//! SMART on FHIR scope grammar, granted scope sets, and route requirements.
//!
//! One grammar serves both sides: the scopes a token grants ([`GrantedScopes::parse`], once per
//! verified token) and the scopes a policy route requires ([`ScopeRequirement`], once at load).
//! It follows SMART-SEMANTICS §1:
//!
//! ```text
//! resource-scope = context "/" type "." ( v2-perms [ "?" query ] / v1-perm )
//! context        = "patient" / "user" / "system"
//! type           = R4-resource-type-name / "*"
//! v2-perms       = ["c"] ["r"] ["u"] ["d"] ["s"]        ; non-empty, in this order
//! v1-perm        = "read" / "write" / "*"               ; = rs, cud, cruds (SAL2)
//! query          = param "=" value *( "&" param "=" value )
//! ```
//!
//! plus the SMART scopes that grant no data (`openid`, `fhirUser`, `launch/patient`, ...) and
//! custom scopes (any other RFC 6749 scope-token, e.g. `reports.read`, compared exactly).
//!
//! An invalid scope in a token grants nothing: it is dropped and counted, never repaired
//! (SAL2: "Scope requests with undefined or out of order interactions MAY be ignored"; reading
//! `.sr` as `.rs` or `.rsx` as `.rs` is the misinterpretation the spec warns about).

use std::fmt;
use std::str::FromStr;

pub use super::r4::ResourceType;

/// The SMART context of a resource scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: data about the one patient in the token's launch context.
    Patient,
    /// `user/`: data available to the signed-in user.
    User,
    /// `system/`: data the client system is authorized for (backend services).
    System,
}

/// A set of SMART v2 permission letters (`c r u d s`), as a bitset.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Letters(u8);

/// The resource type a scope is about: one R4 type or every type (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeType {
    /// `*`: every resource type, now and in the future (SAL2 "Wildcard scopes").
    Any,
    /// One concrete R4 resource type.
    Type(ResourceType),
}

/// How the permissions of a resource scope were written; kept so a scope prints back exactly
/// as it was given (audit records show the token's own words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// SMART v2 letters, e.g. `.rs`.
    V2,
    /// SMART v1 `.read` (= `rs`).
    V1Read,
    /// SMART v1 `.write` (= `cud`).
    V1Write,
    /// SMART v1 `.*` (= `cruds`).
    V1All,
}

/// A `patient/`, `user/` or `system/` scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    context: Context,
    resource: ScopeType,
    letters: Letters,
    syntax: Syntax,
    query: Option<GranularQuery>,
}

/// The query suffix of a SMART v2 granular scope (`?category=...|laboratory&status=final`),
/// validated at parse time: one or more `param=value` items joined by `&`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GranularQuery(Box<str>);

/// A SMART scope that grants no FHIR data (SMART-SEMANTICS §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NonResourceScope {
    /// `openid`
    OpenId,
    /// `fhirUser`
    FhirUser,
    /// `profile`
    Profile,
    /// `launch` (EHR launch)
    Launch,
    /// `launch/<what>`, e.g. `launch/patient`; holds `<what>` (with any `?role=` suffix).
    LaunchContext(Box<str>),
    /// `offline_access`
    OfflineAccess,
    /// `online_access`
    OnlineAccess,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A SMART resource scope (`patient/Observation.rs`, `system/*.read`).
    Resource(ResourceScope),
    /// A SMART launch or identity scope; grants no data.
    NonResource(NonResourceScope),
    /// Any other scope-token (for non-FHIR APIs, e.g. `reports.read`); matched exactly.
    Custom(Box<str>),
}

/// Why a scope string is not a valid scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope `{scope}`: {kind}")]
pub struct ScopeError {
    /// The offending scope, as given.
    pub scope: String,
    /// What is wrong with it.
    pub kind: ScopeErrorKind,
}

/// The ways a scope string can be invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeErrorKind {
    /// The empty string.
    #[error("a scope cannot be empty")]
    Empty,
    /// A character outside RFC 6749 §3.3 scope-token (`%x21 / %x23-5B / %x5D-7E`).
    #[error("`{0}` is not allowed in a scope (RFC 6749 §3.3)")]
    InvalidCharacter(char),
    /// `patient/`, `user/` or `system/` without `.<permissions>`.
    #[error("expected `<ResourceType>.<permissions>` after the context")]
    MissingPermissions,
    /// The resource type is neither an R4 resource type nor `*`.
    #[error("the resource type is not a FHIR R4 resource type or `*` (names are case-sensitive)")]
    UnknownResourceType,
    /// The permissions are neither v2 letters nor a v1 word.
    #[error(
        "permissions must be a non-empty subset of `cruds` in that order, or `read`, `write`, `*`"
    )]
    InvalidPermissions,
    /// A v1 permission with a granular query, which neither SMART version defines.
    #[error("a SMART v1 permission (`read`, `write`, `*`) cannot have a query suffix")]
    V1WithQuery,
    /// A granular query that is not `param=value` items joined by `&`.
    #[error("the query suffix must be one or more `param=value` items joined by `&`")]
    MalformedQuery,
    /// `launch/` with nothing after it.
    #[error("`launch/` must name a launch context, e.g. `launch/patient`")]
    EmptyLaunchContext,
}

/// The scopes granted by a token, parsed once when the token is verified.
///
/// Also keeps each valid scope's text, so the scopes that satisfied a route can be reported
/// with one allocation per request.
#[derive(Debug, Clone, Default)]
pub struct GrantedScopes {
    scopes: Vec<Scope>,
    /// The valid scopes' text, concatenated; `spans[i]` is `scopes[i]`'s part.
    text: String,
    spans: Vec<(u32, u32)>,
    /// Bit set of the [`Context`]s of the resource scopes (for choosing what to ask for).
    contexts: u8,
    invalid: u32,
}

/// What a route requires: every `all_of` scope, and at least one `any_of` scope (when
/// `any_of` is not empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    any_of: Box<[Scope]>,
    all_of: Box<[Scope]>,
}

/// The result of [`ScopeRequirement::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// The requirement is met.
    Satisfied {
        /// Index of the `any_of` alternative that was used (`None` when `any_of` is empty).
        alternative: Option<usize>,
        /// True when a used scope is a `patient/` scope, so `confinement_holds` was
        /// consulted (and held).
        confined: bool,
    },
    /// The scopes are there, but only `patient/` ones, and the request is not confined to
    /// the token's patient.
    OutsideContext,
    /// The token lacks scopes; [`ScopeRequirement::needed`] says which.
    Insufficient,
}

// === impl Context ===

impl Context {
    /// The context as written, without the slash.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Context::Patient => 1,
            Context::User => 2,
            Context::System => 4,
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Letters ===

impl Letters {
    /// No permission.
    pub const NONE: Letters = Letters(0);
    /// `c`: type-level create.
    pub const C: Letters = Letters(1);
    /// `r`: read, vread, instance history.
    pub const R: Letters = Letters(2);
    /// `u`: update, patch.
    pub const U: Letters = Letters(4);
    /// `d`: delete.
    pub const D: Letters = Letters(8);
    /// `s`: search, type and system history.
    pub const S: Letters = Letters(16);
    /// All five (`cruds`, v1 `*`).
    pub const ALL: Letters = Letters(31);

    const ORDER: [(u8, Letters); 5] = [
        (b'c', Letters::C),
        (b'r', Letters::R),
        (b'u', Letters::U),
        (b'd', Letters::D),
        (b's', Letters::S),
    ];

    /// Parses SMART v2 letters: a non-empty subset of `cruds`, in that order, each at most
    /// once. `.sr`, `.rr`, `.RS`, `.rsx` and `` are refused (SAL2: "a subset of the in-order
    /// string `.cruds`").
    pub fn parse_v2(s: &str) -> Option<Letters> {
        let mut out = Letters::NONE;
        let mut next = 0; // index into ORDER of the first letter still allowed
        for &b in s.as_bytes() {
            let pos = Letters::ORDER[next..].iter().position(|&(c, _)| c == b)?;
            out = out.union(Letters::ORDER[next + pos].1);
            next += pos + 1;
        }
        (!out.is_empty()).then_some(out)
    }

    /// True when every letter of `other` is in `self`.
    pub fn contains(self, other: Letters) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when the sets share a letter.
    pub fn intersects(self, other: Letters) -> bool {
        self.0 & other.0 != 0
    }

    /// Letters in either set.
    pub fn union(self, other: Letters) -> Letters {
        Letters(self.0 | other.0)
    }

    /// Letters of `self` that are not in `other`.
    pub fn difference(self, other: Letters) -> Letters {
        Letters(self.0 & !other.0)
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Letters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, l) in Letters::ORDER {
            if self.contains(l) {
                fmt::Write::write_char(f, char::from(c))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Letters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Letters({self})")
    }
}

// === impl ScopeType ===

impl ScopeType {
    /// True when a grant on `self` covers a requirement on `required`: the same type, or a
    /// granted `*`. A required `*` is only covered by a granted `*`.
    pub fn covers(self, required: ScopeType) -> bool {
        self == ScopeType::Any || self == required
    }
}

impl fmt::Display for ScopeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeType::Any => f.write_str("*"),
            ScopeType::Type(t) => f.write_str(t.name()),
        }
    }
}

// === impl ResourceScope ===

impl ResourceScope {
    /// A SMART v2 scope without a query suffix; `None` when `letters` is empty.
    pub fn new(context: Context, resource: ScopeType, letters: Letters) -> Option<ResourceScope> {
        (!letters.is_empty()).then_some(ResourceScope {
            context,
            resource,
            letters,
            syntax: Syntax::V2,
            query: None,
        })
    }

    /// `patient`, `user` or `system`.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The resource type, or `*`.
    pub fn resource(&self) -> ScopeType {
        self.resource
    }

    /// The permissions, v1 words mapped to their v2 letters (SAL2 permission-v1).
    pub fn letters(&self) -> Letters {
        self.letters
    }

    /// How the permissions were written.
    pub fn syntax(&self) -> Syntax {
        self.syntax
    }

    /// The granular query suffix, if any.
    pub fn query(&self) -> Option<&GranularQuery> {
        self.query.as_ref()
    }

    /// True when a grant `self` can contribute letters to the requirement `required`: same
    /// context, a covering type, and no query constraint unless the requirement carries the
    /// very same one (a granular grant never satisfies an unconstrained requirement).
    pub fn applies_to(&self, required: &ResourceScope) -> bool {
        self.context == required.context
            && self.resource.covers(required.resource)
            && match (&self.query, &required.query) {
                (None, _) => true,
                (Some(g), Some(r)) => g == r,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.", self.context, self.resource)?;
        match self.syntax {
            Syntax::V2 => write!(f, "{}", self.letters)?,
            Syntax::V1Read => f.write_str("read")?,
            Syntax::V1Write => f.write_str("write")?,
            Syntax::V1All => f.write_str("*")?,
        }
        if let Some(q) = &self.query {
            write!(f, "?{}", q.as_str())?;
        }
        Ok(())
    }
}

// === impl GranularQuery ===

impl GranularQuery {
    fn parse(s: &str) -> Result<GranularQuery, ScopeErrorKind> {
        // SAL2: "a series of `param=value` items separated by `&`". An empty item, an item
        // without `=` or with an empty side, or a second `?` makes the scope invalid; it must
        // never degrade to the unconstrained scope.
        let valid = !s.is_empty()
            && !s.contains('?')
            && s.split('&').all(|item| {
                item.split_once('=')
                    .is_some_and(|(p, v)| !p.is_empty() && !v.is_empty())
            });
        if valid {
            Ok(GranularQuery(s.into()))
        } else {
            Err(ScopeErrorKind::MalformedQuery)
        }
    }

    /// The suffix as written, without the `?`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `(param, value)` items, as written (not percent-decoded).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.split('&').filter_map(|item| item.split_once('='))
    }
}

// === impl NonResourceScope ===

impl fmt::Display for NonResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonResourceScope::OpenId => f.write_str("openid"),
            NonResourceScope::FhirUser => f.write_str("fhirUser"),
            NonResourceScope::Profile => f.write_str("profile"),
            NonResourceScope::Launch => f.write_str("launch"),
            NonResourceScope::LaunchContext(what) => write!(f, "launch/{what}"),
            NonResourceScope::OfflineAccess => f.write_str("offline_access"),
            NonResourceScope::OnlineAccess => f.write_str("online_access"),
        }
    }
}

// === impl Scope ===

impl Scope {
    /// The resource scope, if this is one.
    pub fn as_resource(&self) -> Option<&ResourceScope> {
        match self {
            Scope::Resource(r) => Some(r),
            _ => None,
        }
    }

    fn parse_kind(s: &str) -> Result<Scope, ScopeErrorKind> {
        if s.is_empty() {
            return Err(ScopeErrorKind::Empty);
        }
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
        if let Some(c) = s
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            return Err(ScopeErrorKind::InvalidCharacter(c));
        }
        let context = [
            ("patient/", Context::Patient),
            ("user/", Context::User),
            ("system/", Context::System),
        ]
        .into_iter()
        .find_map(|(prefix, c)| s.strip_prefix(prefix).map(|rest| (c, rest)));
        if let Some((context, rest)) = context {
            return parse_resource_scope(context, rest).map(Scope::Resource);
        }
        Ok(match s {
            "openid" => Scope::NonResource(NonResourceScope::OpenId),
            "fhirUser" => Scope::NonResource(NonResourceScope::FhirUser),
            "profile" => Scope::NonResource(NonResourceScope::Profile),
            "launch" => Scope::NonResource(NonResourceScope::Launch),
            "offline_access" => Scope::NonResource(NonResourceScope::OfflineAccess),
            "online_access" => Scope::NonResource(NonResourceScope::OnlineAccess),
            _ => match s.strip_prefix("launch/") {
                Some("") => return Err(ScopeErrorKind::EmptyLaunchContext),
                Some(what) => Scope::NonResource(NonResourceScope::LaunchContext(what.into())),
                None => Scope::Custom(s.into()),
            },
        })
    }

    /// The contexts bit of a resource scope, 0 otherwise.
    fn context_bit(&self) -> u8 {
        self.as_resource().map_or(0, |r| r.context.bit())
    }
}

fn parse_resource_scope(context: Context, rest: &str) -> Result<ResourceScope, ScopeErrorKind> {
    // Type names and `*` contain no `.`, so the first `.` ends the type.
    let (ty, perms) = rest
        .split_once('.')
        .ok_or(ScopeErrorKind::MissingPermissions)?;
    let resource = if ty == "*" {
        ScopeType::Any
    } else {
        ScopeType::Type(ResourceType::from_name(ty).ok_or(ScopeErrorKind::UnknownResourceType)?)
    };
    let (perms, query) = match perms.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (perms, None),
    };
    let (letters, syntax) = match perms {
        // SAL2 permission-v1: read = rs, write = cud, * = cruds.
        "read" => (Letters::R.union(Letters::S), Syntax::V1Read),
        "write" => (
            Letters::C.union(Letters::U).union(Letters::D),
            Syntax::V1Write,
        ),
        "*" => (Letters::ALL, Syntax::V1All),
        _ => (
            Letters::parse_v2(perms).ok_or(ScopeErrorKind::InvalidPermissions)?,
            Syntax::V2,
        ),
    };
    let query = match query {
        None => None,
        Some(_) if syntax != Syntax::V2 => return Err(ScopeErrorKind::V1WithQuery),
        Some(q) => Some(GranularQuery::parse(q)?),
    };
    Ok(ResourceScope {
        context,
        resource,
        letters,
        syntax,
        query,
    })
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse_kind(s).map_err(|kind| ScopeError {
            scope: s.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(r) => r.fmt(f),
            Scope::NonResource(n) => n.fmt(f),
            Scope::Custom(c) => f.write_str(c),
        }
    }
}

// === impl GrantedScopes ===

impl GrantedScopes {
    /// Parses the token's scope values; invalid ones are ignored and counted, never widened.
    /// Exact duplicates are kept once.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        let items = items.into_iter();
        let mut g = GrantedScopes {
            scopes: Vec::with_capacity(items.size_hint().0),
            ..GrantedScopes::default()
        };
        for s in items {
            let Ok(scope) = Scope::parse_kind(s) else {
                g.invalid = g.invalid.saturating_add(1);
                continue;
            };
            if g.texts().any(|t| t == s) {
                continue;
            }
            let start = g.text.len();
            g.text.push_str(s);
            // Token sizes are far below 4 GiB; saturate rather than wrap if one is not.
            let span = (
                u32::try_from(start).unwrap_or(u32::MAX),
                u32::try_from(g.text.len()).unwrap_or(u32::MAX),
            );
            g.contexts |= scope.context_bit();
            g.scopes.push(scope);
            g.spans.push(span);
        }
        g
    }

    /// How many scope values were invalid and ignored.
    pub fn invalid_count(&self) -> u32 {
        self.invalid
    }

    /// The valid scopes, in token order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    /// Number of valid scopes.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// True when no valid scope was granted.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The valid resource scopes with their index (for [`GrantedScopes::text_at`]).
    pub fn resource_scopes(&self) -> impl Iterator<Item = (usize, &ResourceScope)> {
        self.scopes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_resource().map(|r| (i, r)))
    }

    /// The text of the `i`-th valid scope, exactly as the token wrote it.
    pub fn text_at(&self, i: usize) -> &str {
        self.text_of(i)
    }

    /// True when the token holds a resource scope in `context`.
    pub fn uses_context(&self, context: Context) -> bool {
        self.contexts & context.bit() != 0
    }

    /// True when the granted scopes satisfy `required` on their own (see
    /// [`ScopeRequirement`] for the rules).
    pub fn satisfies(&self, required: &Scope) -> bool {
        match required {
            Scope::Resource(r) => self.letters_for(r).contains(r.letters),
            other => self.scopes.iter().any(|g| g == other),
        }
    }

    /// The part of `required` that is not granted: `None` when satisfied; for a resource
    /// scope only its missing letters (needs `patient/Observation.rs`, has `.r` ->
    /// `patient/Observation.s`).
    pub fn missing(&self, required: &Scope) -> Option<Scope> {
        match required {
            Scope::Resource(r) => {
                let missing = r.letters.difference(self.letters_for(r));
                (!missing.is_empty()).then(|| {
                    Scope::Resource(ResourceScope {
                        letters: missing,
                        syntax: Syntax::V2,
                        ..r.clone()
                    })
                })
            }
            other => (!self.satisfies(other)).then(|| other.clone()),
        }
    }

    /// The union of the letters granted toward `required` by every applicable grant (SAL2
    /// "Scope Equivalence": letters may come from different scopes).
    fn letters_for(&self, required: &ResourceScope) -> Letters {
        self.scopes
            .iter()
            .filter_map(Scope::as_resource)
            .filter(|g| g.applies_to(required))
            .fold(Letters::NONE, |acc, g| acc.union(g.letters))
    }

    /// True when grant `g` contributes to `required`.
    fn contributes(g: &Scope, required: &Scope) -> bool {
        match (g, required) {
            (Scope::Resource(g), Scope::Resource(r)) => {
                g.applies_to(r) && g.letters.intersects(r.letters)
            }
            (g, r) => g == r,
        }
    }

    fn text_of(&self, i: usize) -> &str {
        let (a, b) = self.spans[i];
        &self.text[a as usize..b as usize]
    }

    /// The valid scopes' text, in token order, exactly as the token wrote them.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        (0..self.spans.len()).map(|i| self.text_of(i))
    }
}

// === impl ScopeRequirement ===

impl ScopeRequirement {
    /// A requirement; at least one list should be non-empty (a requirement with neither is
    /// met by any token, which the policy loader refuses).
    pub fn new(any_of: Vec<Scope>, all_of: Vec<Scope>) -> ScopeRequirement {
        ScopeRequirement {
            any_of: any_of.into(),
            all_of: all_of.into(),
        }
    }

    /// Alternatives, at least one of which must be satisfied (when not empty).
    pub fn any_of(&self) -> &[Scope] {
        &self.any_of
    }

    /// Scopes that must all be satisfied.
    pub fn all_of(&self) -> &[Scope] {
        &self.all_of
    }

    /// True when `granted` meets the requirement, ignoring patient confinement.
    pub fn is_satisfied_by(&self, granted: &GrantedScopes) -> bool {
        matches!(
            self.evaluate(granted, || true),
            Evaluation::Satisfied { .. }
        )
    }

    /// Decides the requirement against `granted`.
    ///
    /// A used scope in the `patient/` context rests on `patient/` grants (contexts must be
    /// equal), so the request must be confined to the token's patient; `confinement_holds`
    /// is asked then (at most once per call is enough: callers may memoize). `any_of`
    /// alternatives are tried in order, and one that needs no confinement, or whose
    /// confinement holds, is chosen; a `user/` or `system/` alternative is never confined.
    pub fn evaluate(
        &self,
        granted: &GrantedScopes,
        mut confinement_holds: impl FnMut() -> bool,
    ) -> Evaluation {
        if !self.all_of.iter().all(|s| granted.satisfies(s)) {
            return Evaluation::Insufficient;
        }
        let all_of_confined = self.all_of.iter().any(is_patient_scope);
        let mut holds: Option<bool> = None;
        let mut check =
            |needed: bool| -> bool { !needed || *holds.get_or_insert_with(&mut confinement_holds) };
        if self.any_of.is_empty() {
            return if check(all_of_confined) {
                Evaluation::Satisfied {
                    alternative: None,
                    confined: all_of_confined,
                }
            } else {
                Evaluation::OutsideContext
            };
        }
        let mut any_satisfied = false;
        for (i, alt) in self.any_of.iter().enumerate() {
            if !granted.satisfies(alt) {
                continue;
            }
            any_satisfied = true;
            let confined = all_of_confined || is_patient_scope(alt);
            if check(confined) {
                return Evaluation::Satisfied {
                    alternative: Some(i),
                    confined,
                };
            }
        }
        if any_satisfied {
            Evaluation::OutsideContext
        } else {
            Evaluation::Insufficient
        }
    }

    /// The minimal space-separated set of scopes that would satisfy the requirement, for the
    /// `scope` attribute of a 403 challenge (RFC 6750 §3: every listed scope is needed, so no
    /// alternatives): the missing parts of `all_of`, plus for an unmet `any_of` the missing
    /// part of one alternative, preferably in a context the token already uses.
    pub fn needed(&self, granted: &GrantedScopes) -> String {
        let mut out: Vec<Scope> = self
            .all_of
            .iter()
            .filter_map(|s| granted.missing(s))
            .collect();
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| granted.satisfies(s)) {
            let pick = self
                .any_of
                .iter()
                .find(|s| {
                    s.as_resource()
                        .is_some_and(|r| granted.uses_context(r.context))
                })
                .unwrap_or(&self.any_of[0]);
            out.extend(granted.missing(pick));
        }
        let mut rendered = String::new();
        for (i, s) in out.iter().enumerate() {
            if out[..i].contains(s) {
                continue;
            }
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(&s.to_string());
        }
        rendered
    }

    /// The granted scopes (as written in the token, space separated, token order) that
    /// contributed to a satisfied evaluation using `any_of[alternative]`.
    pub fn granted_by(&self, granted: &GrantedScopes, alternative: Option<usize>) -> Box<str> {
        let alt = alternative.and_then(|i| self.any_of.get(i));
        let used = |g: &Scope| {
            self.all_of
                .iter()
                .chain(alt)
                .any(|r| GrantedScopes::contributes(g, r))
        };
        // Two passes so the string is allocated once, at its final size.
        let mut len = 0;
        for (i, g) in granted.scopes.iter().enumerate() {
            if used(g) {
                len += granted.text_of(i).len() + 1;
            }
        }
        let mut out = String::with_capacity(len.saturating_sub(1));
        for (i, g) in granted.scopes.iter().enumerate() {
            if used(g) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(granted.text_of(i));
            }
        }
        out.into_boxed_str()
    }
}

/// Renders as `any_of: a b | all_of: c` (either part omitted when empty).
impl fmt::Display for ScopeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (name, list) in [("any_of", &self.any_of), ("all_of", &self.all_of)] {
            if list.is_empty() {
                continue;
            }
            write!(f, "{sep}{name}:")?;
            for s in list.iter() {
                write!(f, " {s}")?;
            }
            sep = " | ";
        }
        Ok(())
    }
}

fn is_patient_scope(s: &Scope) -> bool {
    s.as_resource()
        .is_some_and(|r| r.context == Context::Patient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn kind(s: &str) -> ScopeErrorKind {
        s.parse::<Scope>().expect_err(s).kind
    }

    fn granted(s: &str) -> GrantedScopes {
        GrantedScopes::parse(s.split(' '))
    }

    fn req(any_of: &[&str], all_of: &[&str]) -> ScopeRequirement {
        ScopeRequirement::new(
            any_of.iter().map(|s| scope(s)).collect(),
            all_of.iter().map(|s| scope(s)).collect(),
        )
    }

    fn res(s: &str) -> ResourceScope {
        scope(s).as_resource().cloned().expect("resource scope")
    }

    #[test]
    fn valid_resource_scopes_parse_and_print_back_unchanged() {
        for s in [
            "patient/Observation.rs",
            "patient/Observation.c",
            "patient/Observation.cruds",
            "patient/Observation.cu",
            "patient/Observation.cs",
            "patient/Observation.ds",
            "patient/Observation.us",
            "user/Patient.r",
            "system/*.rs",
            "patient/*.cruds",
            "patient/Patient.read",
            "user/Observation.write",
            "system/*.read",
            "patient/*.*",
            "user/MedicationRequest.*",
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "user/Condition.s?category=problem-list-item&clinical-status=active",
            "patient/Observation.r?code=x=y",
        ] {
            assert_eq!(scope(s).to_string(), s);
            assert!(matches!(scope(s), Scope::Resource(_)), "{s}");
        }
    }

    #[test]
    fn v1_permissions_map_to_v2_letters() {
        assert_eq!(
            res("patient/Patient.read").letters(),
            res("patient/Patient.rs").letters()
        );
        assert_eq!(
            res("user/Patient.write").letters(),
            res("user/Patient.cud").letters()
        );
        assert_eq!(
            res("system/Patient.*").letters(),
            res("system/Patient.cruds").letters()
        );
        assert_eq!(res("system/Patient.*").letters(), Letters::ALL);
        assert_eq!(res("patient/Patient.read").syntax(), Syntax::V1Read);
    }

    #[test]
    fn out_of_order_duplicate_or_unknown_letters_are_invalid() {
        for s in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.dus",
            "patient/Observation.RS",
            "patient/Observation.rsx",
            "patient/Observation.",
            "patient/Observation.x",
            "patient/Observation.scruds",
            "patient/Observation.Read",
            "patient/Observation.READ",
            "patient/Observation.all",
        ] {
            assert_eq!(kind(s), ScopeErrorKind::InvalidPermissions, "{s}");
        }
    }

    #[test]
    fn unknown_or_miscased_resource_types_are_invalid() {
        for s in [
            "patient/Observations.rs",
            "patient/observation.rs",
            "patient/Resource.rs",
            "patient/SubscriptionTopic.rs",
            "patient/.rs",
            "patient/**.rs",
        ] {
            assert_eq!(kind(s), ScopeErrorKind::UnknownResourceType, "{s}");
        }
    }

    #[test]
    fn context_prefixes_without_permissions_are_invalid() {
        for s in [
            "patient/",
            "user/Observation",
            "system/*",
            "patient/Observation?x=1",
        ] {
            assert_eq!(kind(s), ScopeErrorKind::MissingPermissions, "{s}");
        }
    }

    #[test]
    fn malformed_granular_queries_are_invalid_and_never_degrade() {
        for s in [
            "patient/Observation.rs?",
            "patient/Observation.rs?category",
            "patient/Observation.rs?=x",
            "patient/Observation.rs?category=",
            "patient/Observation.rs?a=1&",
            "patient/Observation.rs?&a=1",
            "patient/Observation.rs?a=1&&b=2",
            "patient/Observation.rs?a=1?b=2",
        ] {
            assert_eq!(kind(s), ScopeErrorKind::MalformedQuery, "{s}");
            let g = granted(s);
            assert_eq!(g.invalid_count(), 1);
            assert!(!g.satisfies(&scope("patient/Observation.rs")));
        }
    }

    #[test]
    fn v1_permissions_with_a_query_are_invalid() {
        for s in [
            "system/Observation.read?category=laboratory",
            "user/Observation.write?a=b",
            "patient/Observation.*?a=b",
        ] {
            assert_eq!(kind(s), ScopeErrorKind::V1WithQuery, "{s}");
        }
    }

    #[test]
    fn granular_query_items_are_kept_as_pairs() {
        let r = res("patient/Observation.rs?category=a|b&status=final");
        let pairs: Vec<_> = r.query().unwrap().pairs().collect();
        assert_eq!(pairs, [("category", "a|b"), ("status", "final")]);
        assert!(res("patient/Observation.rs").query().is_none());
    }

    #[test]
    fn non_resource_smart_scopes_are_recognized() {
        for s in [
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "launch/encounter",
            "launch/DiagnosticReport?role=https://example.org/role",
            "offline_access",
            "online_access",
        ] {
            assert!(matches!(scope(s), Scope::NonResource(_)), "{s}");
            assert_eq!(scope(s).to_string(), s);
        }
        assert_eq!(kind("launch/"), ScopeErrorKind::EmptyLaunchContext);
    }

    #[test]
    fn other_scope_tokens_are_custom_scopes() {
        for s in [
            "reports.read",
            "appointments:write",
            "*/Observation.read",
            "Patient/Observation.read",
            "patient",
            "https://example.org/scopes/admin",
            "__internal",
            "OPENID",
        ] {
            assert_eq!(scope(s), Scope::Custom(s.into()), "{s}");
        }
    }

    #[test]
    fn characters_outside_scope_tokens_are_invalid() {
        assert_eq!(kind(""), ScopeErrorKind::Empty);
        assert_eq!(kind("a b"), ScopeErrorKind::InvalidCharacter(' '));
        assert_eq!(kind("a\"b"), ScopeErrorKind::InvalidCharacter('"'));
        assert_eq!(kind("a\\b"), ScopeErrorKind::InvalidCharacter('\\'));
        assert_eq!(kind("rép"), ScopeErrorKind::InvalidCharacter('é'));
        assert_eq!(kind("a\tb"), ScopeErrorKind::InvalidCharacter('\t'));
    }

    #[test]
    fn error_messages_name_the_scope_and_the_reason() {
        let e = "patient/Observation.sr".parse::<Scope>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid scope `patient/Observation.sr`: permissions must be a non-empty subset of \
             `cruds` in that order, or `read`, `write`, `*`"
        );
    }

    #[test]
    fn parsing_a_token_drops_and_counts_invalid_scopes() {
        let g = granted("openid patient/Observation.sr patient/Patient.r  bad\"one reports.read");
        assert_eq!(g.invalid_count(), 3);
        assert_eq!(g.len(), 3);
        let printed: Vec<String> = g.iter().map(|s| s.to_string()).collect();
        assert_eq!(printed, ["openid", "patient/Patient.r", "reports.read"]);
    }

    #[test]
    fn duplicate_grants_are_kept_once() {
        let g = granted("patient/Patient.r patient/Patient.r openid");
        assert_eq!(g.len(), 2);
        assert_eq!(g.invalid_count(), 0);
    }

    #[test]
    fn letters_from_several_grants_are_unioned() {
        let g = granted("patient/Observation.r patient/Observation.s");
        assert!(g.satisfies(&scope("patient/Observation.rs")));
        assert!(!g.satisfies(&scope("patient/Observation.crs")));
    }

    #[test]
    fn v1_and_v2_grants_are_equivalent() {
        assert!(granted("patient/Observation.read").satisfies(&scope("patient/Observation.rs")));
        assert!(granted("patient/Observation.rs").satisfies(&scope("patient/Observation.read")));
        assert!(granted("user/Observation.write").satisfies(&scope("user/Observation.cud")));
        // SAL2: write access does not imply read access.
        assert!(!granted("user/Observation.write").satisfies(&scope("user/Observation.r")));
        assert!(granted("system/*.*").satisfies(&scope("system/Observation.cruds")));
    }

    #[test]
    fn wildcard_grants_cover_every_type_but_a_required_wildcard_needs_a_granted_one() {
        let g = granted("patient/*.rs");
        assert!(g.satisfies(&scope("patient/Observation.r")));
        assert!(g.satisfies(&scope("patient/*.rs")));
        let g = granted("patient/Observation.rs patient/Patient.rs");
        assert!(!g.satisfies(&scope("patient/*.rs")));
        // A wildcard and a typed grant combine.
        let g = granted("patient/*.r patient/Observation.s");
        assert!(g.satisfies(&scope("patient/Observation.rs")));
    }

    #[test]
    fn contexts_never_substitute_for_each_other() {
        let g = granted("user/Observation.rs system/Observation.rs");
        assert!(!g.satisfies(&scope("patient/Observation.r")));
        let g = granted("patient/Observation.rs");
        assert!(!g.satisfies(&scope("user/Observation.r")));
        assert!(!g.satisfies(&scope("system/Observation.r")));
    }

    #[test]
    fn granular_grants_never_satisfy_unconstrained_requirements() {
        let g = granted("patient/Observation.rs?category=laboratory");
        assert!(!g.satisfies(&scope("patient/Observation.r")));
        assert!(!g.satisfies(&scope("patient/Observation.s")));
        // The same constraint is covered, and so is any constraint by an unconstrained grant.
        assert!(g.satisfies(&scope("patient/Observation.rs?category=laboratory")));
        assert!(!g.satisfies(&scope("patient/Observation.rs?category=vital-signs")));
        let g = granted("patient/Observation.rs");
        assert!(g.satisfies(&scope("patient/Observation.rs?category=laboratory")));
    }

    #[test]
    fn custom_and_non_resource_scopes_match_exactly() {
        let g = granted("reports.read launch/patient openid");
        assert!(g.satisfies(&scope("reports.read")));
        assert!(!g.satisfies(&scope("reports.write")));
        assert!(!g.satisfies(&scope("Reports.read")));
        assert!(g.satisfies(&scope("launch/patient")));
        assert!(!g.satisfies(&scope("launch/encounter")));
        assert!(g.satisfies(&scope("openid")));
        // Non-resource scopes grant no data.
        assert!(!g.satisfies(&scope("patient/Patient.r")));
    }

    #[test]
    fn all_of_needs_every_item_and_any_of_needs_one() {
        let r = req(&["patient/Patient.r", "user/Patient.r"], &["reports.read"]);
        assert!(r.is_satisfied_by(&granted("user/Patient.r reports.read")));
        assert!(!r.is_satisfied_by(&granted("user/Patient.r")));
        assert!(!r.is_satisfied_by(&granted("reports.read")));
        let r = req(&[], &["a.read", "b.read"]);
        assert!(r.is_satisfied_by(&granted("b.read a.read")));
        assert!(!r.is_satisfied_by(&granted("a.read")));
    }

    #[test]
    fn patient_alternatives_need_confinement_and_others_do_not() {
        let r = req(&["patient/Patient.r", "user/Patient.r"], &[]);
        let g = granted("patient/Patient.r");
        assert_eq!(
            r.evaluate(&g, || true),
            Evaluation::Satisfied {
                alternative: Some(0),
                confined: true
            }
        );
        assert_eq!(r.evaluate(&g, || false), Evaluation::OutsideContext);
        // With a user/ grant too, the user/ alternative is chosen when confinement fails.
        let g = granted("patient/Patient.r user/Patient.r");
        assert_eq!(
            r.evaluate(&g, || false),
            Evaluation::Satisfied {
                alternative: Some(1),
                confined: false
            }
        );
        assert_eq!(
            r.evaluate(&granted("user/Observation.r"), || true),
            Evaluation::Insufficient
        );
    }

    #[test]
    fn confinement_is_asked_at_most_once() {
        let r = req(&["patient/Patient.r", "patient/*.r", "user/Patient.r"], &[]);
        let g = granted("patient/*.r patient/Patient.r");
        let mut calls = 0;
        let e = r.evaluate(&g, || {
            calls += 1;
            false
        });
        assert_eq!(e, Evaluation::OutsideContext);
        assert_eq!(calls, 1);
    }

    #[test]
    fn patient_scopes_in_all_of_confine_every_alternative() {
        let r = req(&["user/Observation.r"], &["patient/Patient.r"]);
        let g = granted("user/Observation.r patient/Patient.r");
        assert_eq!(r.evaluate(&g, || false), Evaluation::OutsideContext);
        assert_eq!(
            r.evaluate(&g, || true),
            Evaluation::Satisfied {
                alternative: Some(0),
                confined: true
            }
        );
    }

    #[test]
    fn needed_lists_only_the_missing_letters() {
        let r = req(&["patient/Observation.rs", "user/Observation.rs"], &[]);
        assert_eq!(
            r.needed(&granted("patient/Observation.r")),
            "patient/Observation.s"
        );
    }

    #[test]
    fn needed_prefers_a_context_the_token_already_uses() {
        let r = req(
            &[
                "patient/Observation.s",
                "user/Observation.s",
                "system/Observation.s",
            ],
            &[],
        );
        assert_eq!(r.needed(&granted("user/Patient.r")), "user/Observation.s");
        assert_eq!(
            r.needed(&granted("system/Patient.r")),
            "system/Observation.s"
        );
        assert_eq!(
            r.needed(&granted("patient/Patient.r")),
            "patient/Observation.s"
        );
        // No resource scope at all: the first alternative.
        assert_eq!(r.needed(&granted("openid")), "patient/Observation.s");
    }

    #[test]
    fn needed_combines_missing_all_of_items_with_one_alternative() {
        let r = req(
            &["patient/Patient.r", "user/Patient.r"],
            &["reports.read", "user/Observation.rs"],
        );
        assert_eq!(
            r.needed(&granted("user/Observation.r")),
            "reports.read user/Observation.s user/Patient.r"
        );
        // A satisfied any_of adds nothing.
        assert_eq!(
            r.needed(&granted("user/Observation.r user/Patient.r")),
            "reports.read user/Observation.s"
        );
    }

    #[test]
    fn needed_does_not_repeat_a_scope() {
        let r = req(&["reports.read"], &["reports.read"]);
        assert_eq!(r.needed(&granted("openid")), "reports.read");
    }

    #[test]
    fn granted_by_lists_the_contributing_grants_as_written() {
        let r = req(
            &["patient/Observation.rs", "user/Observation.rs"],
            &["openid"],
        );
        let g = granted("openid patient/Observation.read patient/Patient.r user/Observation.rs");
        let Evaluation::Satisfied { alternative, .. } = r.evaluate(&g, || true) else {
            panic!("should be satisfied");
        };
        assert_eq!(
            &*r.granted_by(&g, alternative),
            "openid patient/Observation.read"
        );
        let g = granted("patient/*.r patient/Observation.s patient/Observation.c");
        assert_eq!(
            &*r.granted_by(&g, Some(0)),
            "patient/*.r patient/Observation.s"
        );
    }

    #[test]
    fn requirements_render_readably() {
        assert_eq!(
            req(&["patient/Patient.r", "user/Patient.r"], &["openid"]).to_string(),
            "any_of: patient/Patient.r user/Patient.r | all_of: openid"
        );
        assert_eq!(req(&[], &["a.b"]).to_string(), "all_of: a.b");
        assert_eq!(req(&["x"], &[]).to_string(), "any_of: x");
    }

    #[test]
    fn letters_parse_strictly_and_print_in_order() {
        assert_eq!(Letters::parse_v2("cruds"), Some(Letters::ALL));
        assert_eq!(Letters::parse_v2("rs").unwrap().to_string(), "rs");
        assert_eq!(Letters::parse_v2(""), None);
        assert_eq!(Letters::parse_v2("sr"), None);
        assert_eq!(Letters::parse_v2("cc"), None);
        assert_eq!(Letters::C.union(Letters::S).to_string(), "cs");
    }
}
