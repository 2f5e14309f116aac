use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every object reachable from the two roots, each once.
fn objects() -> Vec<(String, &'static Obj)> {
    fn walk_ty(path: &str, ty: &'static Ty, out: &mut Vec<(String, &'static Obj)>) {
        match ty {
            Ty::Obj(o) => walk(path.to_owned(), o, out),
            Ty::ListOf(o, _) => walk(format!("{path}[]"), o, out),
            Ty::List(item, _) | Ty::OneOrList(item) | Ty::MapOf(_, item) => {
                walk_ty(&format!("{path}[]"), item, out)
            }
            Ty::OneOf(alternatives) => {
                for a in *alternatives {
                    walk_ty(path, a, out)
                }
            }
            _ => {}
        }
    }
    fn walk(path: String, o: &'static Obj, out: &mut Vec<(String, &'static Obj)>) {
        if out.iter().any(|(_, seen)| std::ptr::eq(*seen, o)) {
            return;
        }
        out.push((path.clone(), o));
        for p in o.props {
            let sub = if path.is_empty() || path.ends_with(':') {
                format!("{path}{}", p.key)
            } else {
                format!("{path}.{}", p.key)
            };
            walk_ty(&sub, &p.ty, out);
        }
    }
    let mut out = Vec::new();
    walk("config:".to_owned(), &CONFIG, &mut out);
    walk("policy:".to_owned(), &POLICY, &mut out);
    out
}

/// The `const NAME_KEYS: &[&str] = &[...];` tables of every source file under `src/`, by
/// `<file relative to src/>::<NAME>`.
fn key_tables() -> BTreeMap<String, Vec<String>> {
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                // This module's tests spell key tables as test data.
                if !p.ends_with("schema") {
                    rs_files(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = manifest_dir().join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut tables = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source is readable");
        let rel = f
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        for (name, keys) in parse_key_tables(&text) {
            tables.insert(format!("{rel}::{name}"), keys);
        }
    }
    tables
}

/// Finds `const X_KEYS: &[&str] = &[ "a", "b", ];` (any visibility, any layout).
fn parse_key_tables(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("const ") {
        rest = &rest[at + "const ".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = rest[name.len()..].trim_start();
        if !name.ends_with("_KEYS") || !after.starts_with(": &[&str]") {
            continue;
        }
        let Some(open) = after.find("= &[") else {
            continue;
        };
        let body = &after[open + "= &[".len()..];
        let end = body.find("];").expect("a key table ends with `];`");
        let keys = body[..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        out.push((name, keys));
    }
    out
}

/// What differs between an object's properties and its loader table.
fn compare(obj: &Obj, table: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for k in table {
        if !obj.props.iter().any(|p| p.key == k) {
            problems.push(format!(
                "key `{k}` is read by the loader but missing from the schema"
            ));
        }
    }
    for p in obj.props {
        if !p.pending && !table.iter().any(|k| k == p.key) {
            problems.push(format!(
                "key `{}` is in the schema but not in the loader's table",
                p.key
            ));
        }
    }
    problems
}

#[test]
fn the_shipped_schema_files_are_the_generated_ones() {
    for (which, arg) in [(Which::Config, "config"), (Which::Policy, "policy")] {
        let path = manifest_dir().join("schemas").join(file_name(which));
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == render(which),
            "{} is not what `fhirwall schema {arg}` prints; regenerate it with\n    cargo run -- schema {arg} > schemas/{}",
            path.display(),
            file_name(which)
        );
    }
}

#[test]
fn every_schema_object_matches_its_loader_key_table() {
    let tables = key_tables();
    assert!(
        tables.contains_key("config/file.rs::TOP_KEYS")
            && tables.contains_key("policy/load.rs::ROUTE_KEYS"),
        "the key-table scanner found no tables: {tables:?}"
    );
    let mut problems = Vec::new();
    for (path, obj) in objects() {
        let (id, pending) = match obj.keys {
            Keys::Table(id) => (id, false),
            Keys::Pending(id) => (id, true),
        };
        match tables.get(id) {
            None if pending => {}
            None => problems.push(format!("{path}: no key table `{id}` in src/")),
            Some(table) => {
                for p in compare(obj, table) {
                    problems.push(format!("{path} ({id}): {p}"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the schema (src/schema.rs) and the loaders disagree; add or remove the key next to \
         the others of its object, then regenerate schemas/ (`cargo run -- schema config > \
         schemas/fhirwall-config.schema.json`, same for `policy`):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_loader_key_table_belongs_to_a_schema_object() {
    let claimed: Vec<&str> = objects()
        .iter()
        .map(|(_, o)| match o.keys {
            Keys::Table(id) | Keys::Pending(id) => id,
        })
        .collect();
    let unclaimed: Vec<String> = key_tables()
        .into_keys()
        .filter(|id| !claimed.contains(&id.as_str()))
        .collect();
    assert!(
        unclaimed.is_empty(),
        "key tables no schema object describes (add an `Obj` with `keys: Some(\"<id>\")` in \
         src/schema.rs, or point a pending one at it): {unclaimed:?}"
    );
}

#[test]
fn a_key_missing_on_either_side_is_reported() {
    let table: Vec<String> = ["issuer", "audiences", "new_key"]
        .map(str::to_owned)
        .to_vec();
    let problems = compare(&ISSUER, &table);
    assert!(problems
        .iter()
        .any(|p| p.contains("`new_key` is read by the loader but missing")));
    assert!(problems
        .iter()
        .any(|p| p.contains("`leeway` is in the schema but not in the loader")));
    // A pending key may be absent from the loader, not the other way round.
    let policy_top: Vec<String> = [
        "version",
        "base_path",
        "routes",
        "quotas",
        "distinct_patients",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(compare(&POLICY, &policy_top), Vec::<String>::new());
}

#[test]
fn the_table_scanner_reads_every_layout() {
    let src = "const A_KEYS: &[&str] = &[\"x\", \"y\"];\n\
               pub(crate) const B_KEYS: &[&str] = &[\n    \"p\",\n    \"q\",\n];\n\
               const OTHER: &[&str] = &[\"z\"];\nconst MAX_KEYS: usize = 3;\n";
    assert_eq!(
        parse_key_tables(src),
        vec![
            ("A_KEYS".to_owned(), vec!["x".to_owned(), "y".to_owned()]),
            ("B_KEYS".to_owned(), vec!["p".to_owned(), "q".to_owned()]),
        ]
    );
}

#[test]
fn every_object_and_property_is_described() {
    for (path, obj) in objects() {
        assert!(!obj.desc.trim().is_empty(), "{path} has no description");
        for p in obj.props {
            assert!(
                p.desc.trim().len() > 8,
                "{path}.{} has no useful description",
                p.key
            );
        }
    }
}

#[test]
fn defaults_are_valid_values_of_their_type() {
    for (path, obj) in objects() {
        for p in obj.props {
            let Some(d) = p.default else { continue };
            let ok = match &p.ty {
                Ty::Duration => crate::config::yaml::parse_duration(d).is_some(),
                Ty::Bool => d == "true" || d == "false",
                Ty::Int(min, max) => d
                    .parse::<u64>()
                    .is_ok_and(|n| n >= *min && max.is_none_or(|m| n <= m)),
                Ty::Enum(items) => items.contains(&d),
                Ty::List(..) => serde_json::from_str::<Vec<String>>(d).is_ok(),
                Ty::NonEmpty => !d.is_empty(),
                Ty::Pattern(_) | Ty::Str => true,
                _ => false,
            };
            assert!(ok, "{path}.{}: default `{d}` does not fit its type", p.key);
            assert!(
                !p.required,
                "{path}.{} is required and has a default",
                p.key
            );
        }
    }
}

#[test]
fn the_generated_schemas_are_json_with_the_draft_and_every_top_level_key() {
    let config: serde_json::Value = serde_json::from_str(&render(Which::Config)).expect("JSON");
    assert_eq!(
        config["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(config["additionalProperties"], false);
    assert_eq!(
        config["properties"]["upstream"]["properties"]["connect_timeout"]["default"],
        "2s"
    );
    assert_eq!(
        config["properties"]["issuers"]["items"]["required"],
        serde_json::json!(["issuer", "audiences"])
    );
    let policy: serde_json::Value = serde_json::from_str(&render(Which::Policy)).expect("JSON");
    let methods =
        &policy["properties"]["routes"]["items"]["properties"]["methods"]["items"]["enum"];
    assert_eq!(methods.as_array().map(Vec::len), Some(METHODS.len()));
    assert_eq!(
        policy["properties"]["fhir"]["properties"]["paging"]["properties"]["ttl"]["default"],
        "30m"
    );
}

/// Where each enum of the schema sits in a file the loader reads: the schema path of its
/// object, the key, a document with `{V}` where the value goes, and the key path the loader
/// reports problems at.
struct EnumCase {
    object: &'static str,
    key: &'static str,
    doc: &'static str,
    at: &'static str,
}

const CONFIG_HEAD: &str = "listen: 127.0.0.1:18080\nadmin_listen: 127.0.0.1:19090\n\
    policy: ../policies/legacy-api.yaml\nupstream: {url: 'http://127.0.0.1:1'}\n\
    issuers:\n  - issuer: https://idp.example.org\n    audiences: [a]\n";

const ENUM_CASES: &[EnumCase] = &[
    EnumCase {
        object: "config:issuers[]",
        key: "algorithms",
        doc: "    algorithms: [{V}]\n",
        at: "issuers[0].algorithms[0]",
    },
    EnumCase {
        object: "config:issuers[].introspection",
        key: "auth",
        doc: "    introspection: {client_id: c, auth: {V}, client_secret_env: S, private_key_file: k.pem}\n",
        at: "issuers[0].introspection.auth",
    },
    EnumCase {
        object: "config:issuers[].introspection",
        key: "private_key_alg",
        doc: "    introspection: {client_id: c, auth: private_key_jwt, private_key_file: k.pem, private_key_alg: {V}}\n",
        at: "issuers[0].introspection.private_key_alg",
    },
    EnumCase {
        object: "config:audit",
        key: "durability",
        doc: "audit: {durability: {V}}\n",
        at: "audit.durability",
    },
    EnumCase {
        object: "config:log",
        key: "format",
        doc: "log: {format: {V}}\n",
        at: "log.format",
    },
    EnumCase {
        object: "policy:routes[]",
        key: "methods",
        doc: "routes:\n  - {id: r, methods: [{V}], path: /x, scopes: {any_of: [user/Patient.r]}}\n",
        at: "routes[0].methods[0]",
    },
    EnumCase {
        object: "policy:quotas[]",
        key: "key",
        doc: "routes: []\nquotas:\n  - {id: q, key: {V}, rate: 10/1s}\n",
        at: "quotas[0].key",
    },
    EnumCase {
        object: "policy:quotas[]",
        key: "interactions",
        doc: "routes: []\nquotas:\n  - {id: q, key: client, rate: 10/1s, interactions: [{V}]}\n",
        at: "quotas[0].interactions[0]",
    },
    EnumCase {
        object: "policy:distinct_patients",
        key: "key",
        doc: "routes: []\ndistinct_patients: {key: {V}, limit: 10, window: 1h}\n",
        at: "distinct_patients.key",
    },
    EnumCase {
        object: "policy:distinct_patients",
        key: "action",
        doc: "routes: []\ndistinct_patients: {action: {V}, limit: 10, window: 1h}\n",
        at: "distinct_patients.action",
    },
];

/// The values an enum property (or a list of them) allows.
fn enum_values(ty: &Ty) -> Option<Vec<&'static str>> {
    match ty {
        Ty::Enum(items) => Some(items.to_vec()),
        Ty::EnumFn(f) => Some(f()),
        Ty::List(item, _) => enum_values(item),
        _ => None,
    }
}

/// The error diagnostics the loader reports at `at` for `doc` with `value`.
fn loader_errors_at(case: &EnumCase, value: &str) -> Vec<String> {
    let doc = case.doc.replace("{V}", value);
    let diags = if case.object.starts_with("config:") {
        let path = manifest_dir().join("deploy/schema-test.yaml");
        match crate::config::Config::from_str_at_with_warnings(
            &format!("{CONFIG_HEAD}{doc}"),
            &path,
        ) {
            Ok(_) => Vec::new(),
            Err(d) => d.0,
        }
    } else {
        let src = format!("version: 1\n{doc}");
        match crate::policy::Policy::parse(&src, Path::new("schema-test.yaml")) {
            Ok(_) => Vec::new(),
            Err(d) => d.0,
        }
    };
    diags
        .into_iter()
        .filter(|d| d.key == case.at && d.severity == crate::config::Severity::Error)
        .map(|d| d.message)
        .collect()
}

#[test]
fn every_value_a_schema_enum_allows_is_accepted_by_the_loader_and_others_are_not() {
    // Every enum of a mapping the loader reads is covered by a case.
    for (path, obj) in objects() {
        if matches!(obj.keys, Keys::Pending(_)) {
            continue;
        }
        for p in obj.props.iter().filter(|p| !p.pending) {
            if enum_values(&p.ty).is_some() {
                assert!(
                    ENUM_CASES
                        .iter()
                        .any(|c| c.object == path && c.key == p.key),
                    "{path}.{}: an enum without an ENUM_CASES entry (schema/tests.rs)",
                    p.key
                );
            }
        }
    }
    let objs = objects();
    for case in ENUM_CASES {
        let (_, obj) = objs
            .iter()
            .find(|(path, _)| *path == case.object)
            .unwrap_or_else(|| panic!("no schema object {}", case.object));
        let prop = obj.props.iter().find(|p| p.key == case.key).expect("key");
        let values = enum_values(&prop.ty).expect("an enum");
        for v in values {
            let errors = loader_errors_at(case, v);
            assert!(
                errors.is_empty(),
                "{}: the schema allows `{v}`, the loader refuses it: {errors:?}",
                case.at
            );
        }
        assert!(
            !loader_errors_at(case, "no-such-value").is_empty(),
            "{}: the loader accepts a value outside the schema's enum (or the case does not reach the key)",
            case.at
        );
    }
}
