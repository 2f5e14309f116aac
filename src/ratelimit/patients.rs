//! The distinct-patients guard: which patients a request touches, and how many different
//! patients one key (a client or a subject) has touched in the last window.
//!
//! "Repeated requests across many patient records" is the shape of bulk scraping with a
//! `user/` or `system/` token: each request is allowed, but together they read the whole
//! population. The guard counts the distinct patients per key over a sliding window and,
//! past the limit, refuses (or only alerts).
//!
//! Extraction fails safe: a value that names a patient in a way fhirwall cannot normalize
//! (bad percent-encoding, an identifier instead of an id) still counts, as a patient of its
//! own. Only values that are certainly not patients (`subject=Group/1`, `:missing=true`,
//! chained parameters, whose targets are unknown) are left out.
//!
//! Memory: a key keeps at most `limit` entries of 16 bytes (patient fingerprint, last seen)
//! in a hash map (about 32 bytes per entry with the table's overhead); keys whose newest
//! entry left the window are dropped by [`GuardStore::prune`]. At most [`MAX_GUARD_KEYS`]
//! keys are tracked per instance; past that the least recently active are dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

use parking_lot::Mutex;

use super::spec::GuardAction;

/// Most patients taken from one request; a request naming more counts as over any limit.
pub const MAX_PATIENTS_PER_REQUEST: usize = 1000;

/// Most keys (clients or subjects) the guard tracks per instance.
pub const MAX_GUARD_KEYS: usize = 100_000;

const SHARDS: usize = 16;

/// The patients one request touches, as named in it (duplicates removed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched<'a> {
    /// Patient ids (or, failing safe, the raw reference values).
    pub ids: Vec<Cow<'a, str>>,
    /// More than [`MAX_PATIENTS_PER_REQUEST`] were named.
    pub overflow: bool,
}

/// Finds the patients a request names: `Patient/{id}` in the path (read, vread, history,
/// compartment search, instance operations), `patient` and `subject` query values (ids,
/// `Patient/{id}` references, comma lists, the `:Patient` modifier), and `_id` on a `Patient`
/// search. `path` is below the FHIR base.
pub fn touched<'a>(path: &'a str, query: Option<&'a str>) -> Touched<'a> {
    let mut out = Touched::default();
    let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
    let first = segments.peek().copied();
    while let Some(s) = segments.next() {
        if s == "Patient" {
            if let Some(id) = segments.peek() {
                if !id.starts_with('$') && !id.starts_with('_') {
                    out.push(decode(id));
                }
            }
        }
    }
    let Some(query) = query else {
        return out;
    };
    let patient_search =
        first == Some("Patient") && path.split('/').filter(|s| !s.is_empty()).count() == 1;
    for pair in query.split(['&', ';']).filter(|p| !p.is_empty()) {
        let (raw_name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name);
        let (param, modifier) = match name.split_once(':') {
            Some((p, m)) => (p, Some(m)),
            None => (&*name, None),
        };
        let kind = match param {
            "patient" => Param::Patient,
            "subject" => Param::Subject,
            "_id" if patient_search => Param::Id,
            _ => continue,
        };
        match modifier {
            // `:missing=true` is a boolean; `:not` / `:above` etc. still name a patient.
            Some("missing") => continue,
            // `subject:Group=1` targets another type.
            Some(m) if m.starts_with(|c: char| c.is_ascii_uppercase()) && m != "Patient" => {
                continue
            }
            _ => {}
        }
        for v in value.split(',').filter(|v| !v.is_empty()) {
            if v.contains('%') {
                let decoded = decode(v);
                if let Some(id) = reference_patient(&decoded, kind, modifier) {
                    out.push(Cow::Owned(id.to_owned()));
                }
            } else if let Some(id) = reference_patient(v, kind, modifier) {
                out.push(Cow::Borrowed(id));
            }
            if out.overflow {
                return out;
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Patient,
    Subject,
    Id,
}

/// The patient a reference value names, if it (possibly) names one.
fn reference_patient<'v>(v: &'v str, kind: Param, modifier: Option<&str>) -> Option<&'v str> {
    if kind == Param::Id {
        return Some(v);
    }
    // `:identifier` values are `system|value`: a patient fhirwall cannot map to an id, but a
    // patient all the same; it counts as its own.
    if modifier == Some("identifier") {
        return Some(v);
    }
    if !v.contains('/') {
        // A bare id: the patient for `patient`; for `subject` the type is unknown, and the
        // safe reading is that it may be a patient.
        return Some(v);
    }
    // `Patient/1`, `https://host/fhir/Patient/1`, `Patient/1/_history/2`.
    let mut parts = v.split('/');
    while let Some(p) = parts.next() {
        if p == "Patient" {
            return parts.next().filter(|id| !id.is_empty());
        }
    }
    // A reference to another type (`Group/1`, `Device/7`).
    None
}

/// Percent-decodes `s`; invalid encoding keeps the raw text (it still counts, as itself).
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    match percent_encoding::percent_decode_str(s).decode_utf8() {
        Ok(d) if !has_bad_escape(s) => Cow::Owned(d.into_owned()),
        _ => Cow::Borrowed(s),
    }
}

fn has_bad_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

// === impl Touched ===

impl<'a> Touched<'a> {
    fn push(&mut self, id: Cow<'a, str>) {
        if self.ids.contains(&id) {
            return;
        }
        if self.ids.len() >= MAX_PATIENTS_PER_REQUEST {
            self.overflow = true;
            return;
        }
        self.ids.push(id);
    }

    /// True when the request names no patient.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.overflow
    }
}

/// The result of counting a request's patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOutcome {
    /// Within the limit; `distinct` patients in the window after this request.
    Within {
        /// Distinct patients in the window.
        distinct: u32,
    },
    /// Over the limit. With [`GuardAction::Deny`] nothing was recorded; with
    /// [`GuardAction::Alert`], the patients that fit were.
    Over {
        /// Distinct patients in the window before this request.
        distinct: u32,
        /// When enough entries leave the window for this request to fit.
        retry_after: Duration,
    },
}

/// The limit a [`GuardStore`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRule {
    /// Distinct patients allowed per window.
    pub limit: u32,
    /// The sliding window.
    pub window: Duration,
    /// What happens past the limit.
    pub action: GuardAction,
}

/// Per-key sliding-window sets of patient fingerprints, sharded. Times are nanoseconds on
/// the caller's clock.
pub struct GuardStore {
    shards: Box<[Mutex<HashMap<u64, KeySet>>]>,
    hasher: std::hash::RandomState,
    max_keys_per_shard: usize,
}

/// One key's patients: fingerprint -> last seen (ns), plus the newest time (for pruning).
#[derive(Default)]
struct KeySet {
    seen: HashMap<u64, u64>,
    newest: u64,
}

// === impl GuardStore ===

impl GuardStore {
    /// An empty store tracking at most `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        GuardStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// A fingerprint of a patient id (keyed per process; ids never stay in memory).
    pub fn fingerprint(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Counts `patients` (fingerprints; `overflow` when the request named too many) for `key`
    /// at `now` against `rule`.
    pub fn check(
        &self,
        key: u64,
        patients: &[u64],
        overflow: bool,
        now: u64,
        rule: GuardRule,
    ) -> GuardOutcome {
        let GuardRule {
            limit,
            window,
            action,
        } = rule;
        let window = window.as_nanos() as u64;
        // Entries seen at or before `cutoff` have left the window (none, early on).
        let cutoff = now.checked_sub(window);
        let live = |seen: u64| cutoff.is_none_or(|c| seen > c);
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut keys = shard.lock();
        if !keys.contains_key(&key) && keys.len() >= self.max_keys_per_shard {
            // Make room: drop the keys with no recent activity first, then the least recent.
            keys.retain(|_, s| live(s.newest));
            if keys.len() >= self.max_keys_per_shard {
                if let Some(oldest) = keys.iter().min_by_key(|(_, s)| s.newest).map(|(k, _)| *k) {
                    keys.remove(&oldest);
                }
            }
        }
        let set = keys.entry(key).or_default();
        let mut new = patients
            .iter()
            .filter(|p| !set.seen.contains_key(p))
            .count();
        let limit = limit as usize;
        if set.seen.len() + new > limit {
            // Entries that left the window do not count; drop them before deciding.
            set.seen.retain(|_, seen| live(*seen));
            new = patients
                .iter()
                .filter(|p| !set.seen.contains_key(p))
                .count();
        }
        let distinct = set.seen.len();
        if overflow || distinct + new > limit {
            let retry_after = retry_after(&set.seen, distinct + new, limit, now, window);
            if action == GuardAction::Alert {
                // Serve, but keep at most `limit` entries: the ones already known are
                // refreshed and new ones are added while there is room.
                for p in patients {
                    if let Some(seen) = set.seen.get_mut(p) {
                        *seen = now;
                    } else if set.seen.len() < limit {
                        set.seen.insert(*p, now);
                    }
                }
                set.newest = now;
            }
            return GuardOutcome::Over {
                distinct: distinct as u32,
                retry_after,
            };
        }
        for p in patients {
            set.seen.insert(*p, now);
        }
        set.newest = now;
        GuardOutcome::Within {
            distinct: set.seen.len() as u32,
        }
    }

    /// Drops keys with no activity in the last `window` before `now`.
    pub fn prune(&self, now: u64, window: Duration) {
        let Some(cutoff) = now.checked_sub(window.as_nanos() as u64) else {
            return;
        };
        for shard in self.shards.iter() {
            shard.lock().retain(|_, s| s.newest > cutoff);
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Time until `needed - limit` of the oldest entries have left the window (at least 1 s when
/// the request could never fit, e.g. it names more patients than the limit).
fn retry_after(
    seen: &HashMap<u64, u64>,
    needed: usize,
    limit: usize,
    now: u64,
    window: u64,
) -> Duration {
    let excess = needed.saturating_sub(limit);
    if excess == 0 || excess > seen.len() {
        return Duration::from_nanos(window);
    }
    let mut times: Vec<u64> = seen.values().copied().collect();
    let (_, kth, _) = times.select_nth_unstable(excess - 1);
    Duration::from_nanos((*kth + window).saturating_sub(now)).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(path: &str, query: Option<&str>) -> Vec<String> {
        touched(path, query)
            .ids
            .into_iter()
            .map(|c| c.into_owned())
            .collect()
    }

    #[test]
    fn patients_in_the_path_are_found() {
        assert_eq!(ids("/Patient/123", None), ["123"]);
        assert_eq!(ids("/Patient/123/_history/4", None), ["123"]);
        assert_eq!(ids("/Patient/123/Observation", None), ["123"]);
        assert_eq!(ids("/Patient/123/$everything", None), ["123"]);
        assert!(ids("/Patient", None).is_empty());
        assert!(ids("/Patient/$export", None).is_empty());
        assert!(ids("/Patient/_search", None).is_empty());
        assert!(ids("/Observation/9", None).is_empty());
    }

    #[test]
    fn patient_and_subject_query_values_are_found() {
        assert_eq!(ids("/Observation", Some("patient=1")), ["1"]);
        assert_eq!(ids("/Observation", Some("patient=Patient/1&code=x")), ["1"]);
        assert_eq!(ids("/Observation", Some("patient=Patient%2F1")), ["1"]);
        assert_eq!(ids("/Observation", Some("patient=1,2,1")), ["1", "2"]);
        assert_eq!(ids("/Observation", Some("subject=Patient/7")), ["7"]);
        assert_eq!(
            ids(
                "/Observation",
                Some("subject=https://x/fhir/Patient/7/_history/1")
            ),
            ["7"]
        );
        assert_eq!(ids("/Observation", Some("subject:Patient=8")), ["8"]);
        assert_eq!(ids("/Observation", Some("pati%65nt=9")), ["9"]);
        assert_eq!(ids("/Patient", Some("_id=1,2")), ["1", "2"]);
        assert_eq!(ids("/Patient/5/Observation", Some("patient=5")), ["5"]);
    }

    #[test]
    fn values_that_are_not_patients_are_left_out() {
        assert!(ids("/Observation", Some("subject=Group/1")).is_empty());
        assert!(ids("/Observation", Some("subject:Group=1")).is_empty());
        assert!(ids("/Observation", Some("patient:missing=true")).is_empty());
        assert!(ids("/Observation", Some("patient.name=Smith")).is_empty());
        assert!(ids("/Observation", Some("_id=1")).is_empty());
        assert!(ids("/Observation", Some("code=patient")).is_empty());
    }

    #[test]
    fn unreadable_values_fail_safe_and_still_count() {
        assert_eq!(ids("/Observation", Some("patient=12%zz")), ["12%zz"]);
        assert_eq!(ids("/Observation", Some("subject=abc")), ["abc"]);
        assert_eq!(
            ids("/Observation", Some("patient:identifier=urn:mrn|77")),
            ["urn:mrn|77"]
        );
        // `;` separators are read too (some servers split on them).
        assert_eq!(ids("/Observation", Some("code=x;patient=3")), ["3"]);
    }

    #[test]
    fn a_request_naming_too_many_patients_overflows() {
        let q: Vec<String> = (0..MAX_PATIENTS_PER_REQUEST + 5)
            .map(|i| i.to_string())
            .collect();
        let q = format!("patient={}", q.join(","));
        let t = touched("/Observation", Some(&q));
        assert!(t.overflow);
        assert_eq!(t.ids.len(), MAX_PATIENTS_PER_REQUEST);
    }

    const S: u64 = 1_000_000_000;

    fn rule(limit: u32, window: Duration, action: GuardAction) -> GuardRule {
        GuardRule {
            limit,
            window,
            action,
        }
    }

    #[test]
    fn the_guard_trips_at_the_configured_count_and_recovers_as_the_window_slides() {
        let g = GuardStore::new(10);
        let w = Duration::from_secs(60);
        let deny = GuardAction::Deny;
        for i in 0..3u64 {
            assert_eq!(
                g.check(1, &[i], false, i * S, rule(3, w, deny)),
                GuardOutcome::Within {
                    distinct: i as u32 + 1
                }
            );
        }
        // Already-seen patients never count twice.
        assert_eq!(
            g.check(1, &[0, 2], false, 10 * S, rule(3, w, deny)),
            GuardOutcome::Within { distinct: 3 }
        );
        // The fourth distinct patient trips; patient 1 (seen at 1 s) leaves at 61 s.
        assert_eq!(
            g.check(1, &[9], false, 20 * S, rule(3, w, deny)),
            GuardOutcome::Over {
                distinct: 3,
                retry_after: Duration::from_secs(41)
            }
        );
        // Denied: nothing was recorded, so the same request is refused again.
        assert!(matches!(
            g.check(1, &[9], false, 30 * S, rule(3, w, deny)),
            GuardOutcome::Over { .. }
        ));
        // Another key is independent.
        assert!(matches!(
            g.check(2, &[9], false, 30 * S, rule(3, w, deny)),
            GuardOutcome::Within { .. }
        ));
        // Once patient 1 left the window there is room again.
        assert_eq!(
            g.check(1, &[9], false, 62 * S, rule(3, w, deny)),
            GuardOutcome::Within { distinct: 3 }
        );
    }

    #[test]
    fn alert_mode_serves_but_keeps_the_set_bounded() {
        let g = GuardStore::new(10);
        let w = Duration::from_secs(60);
        for i in 0..2u64 {
            g.check(1, &[i], false, 0, rule(2, w, GuardAction::Alert));
        }
        for i in 2..50u64 {
            assert!(matches!(
                g.check(1, &[i], false, S, rule(2, w, GuardAction::Alert)),
                GuardOutcome::Over { distinct: 2, .. }
            ));
        }
        let shard = g.shards[1 % SHARDS].lock();
        assert_eq!(shard[&1].seen.len(), 2);
    }

    #[test]
    fn overflowing_requests_are_over_any_limit() {
        let g = GuardStore::new(10);
        assert!(matches!(
            g.check(
                1,
                &[1],
                true,
                0,
                rule(100, Duration::from_secs(60), GuardAction::Deny)
            ),
            GuardOutcome::Over { .. }
        ));
    }

    #[test]
    fn keys_are_bounded_and_idle_ones_pruned() {
        let g = GuardStore::new(SHARDS);
        let w = Duration::from_secs(60);
        for k in 0..(SHARDS as u64 * 5) {
            g.check(k, &[1], false, k, rule(10, w, GuardAction::Deny));
        }
        assert_eq!(g.len(), SHARDS);
        g.prune(1000 * S, w);
        assert!(g.is_empty());
    }
}
