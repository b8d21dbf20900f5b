//! `weir validate`: every problem of every StreamJob in a YAML stream (a file of documents
//! separated by `---`, as a GitOps repository holds them), found the way the API server and the
//! operator would find them. Pure: text in, reports out; reading files is the caller's.
//!
//! A StreamJob is checked in three passes, so that one mistake does not hide the others:
//! 1. the CRD's own `openAPIV3Schema` (generated from the types, see [`crate::crd_yaml`]) is
//!    walked over the whole object: types, `required`, `enum`, `pattern`, lengths, ranges,
//!    duplicates in `set` and `map` lists, and unknown fields (with the field probably meant).
//!    A type error in one field does not stop the walk, so type errors in several fields all
//!    show.
//! 2. The typed parse, then [`StreamJobSpec::validate`](crate::StreamJobSpec::validate), which
//!    checks every schema rule again and mirrors every CEL rule. When the parse fails on
//!    optional fields the walk already refused, it is retried without them, so the cross-field
//!    rules still run on the rest. A problem found by both passes is reported once (the
//!    message of `validate()`, which is the operator's).
//! 3. `metadata.name`: a DNS-1123 subdomain as the API server requires, short enough for the
//!    names the operator derives from it ([`names::job_name_problem`],
//!    [`names::checkpoint_names_problem`]).
//!
//! Documents of other kinds are skipped (a GitOps repository mixes kinds); a document of kind
//! `StreamJob` with another `apiVersion`, or of another kind in the `weir.dev` group, is an
//! error.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::schema::schema;
use crate::suggest::{closest, suggestion};
use crate::{names, FieldError, StreamJob, GROUP, VERSION};

/// What one document of a YAML stream turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position in the stream, from 1 (empty documents take a number too, so that it matches
    /// a count of the `---` separators).
    pub index: usize,
    /// `apiVersion`, empty when absent.
    pub api_version: String,
    /// `kind`, empty when absent.
    pub kind: String,
    /// `metadata.name`, when it is a string.
    pub name: Option<String>,
    /// The verdict.
    pub outcome: Outcome,
}

/// The verdict on one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A StreamJob with no problem.
    Valid,
    /// A StreamJob (or what claims to be one) with problems, each naming its field.
    Invalid(Vec<FieldError>),
    /// Not a StreamJob: another kind, left alone.
    Skipped,
    /// Not YAML from here on: the message, with its line and column. The rest of the stream is
    /// not read (a YAML parser cannot resynchronise).
    NotYaml(String),
}

impl Document {
    /// The problems to report: a StreamJob's field errors, or the YAML error (with an empty
    /// path). Empty for valid and skipped documents.
    pub fn errors(&self) -> Vec<FieldError> {
        match &self.outcome {
            Outcome::Invalid(errors) => errors.clone(),
            Outcome::NotYaml(message) => vec![FieldError {
                path: String::new(),
                message: message.clone(),
            }],
            Outcome::Valid | Outcome::Skipped => Vec::new(),
        }
    }
}

/// Check every document of a YAML (or JSON) stream. Empty documents are left out.
pub fn validate_documents(text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        // `<<: *anchor` merge keys, as kubectl reads them.
        let value = match serde_norway::Value::deserialize(de).and_then(|mut v| {
            v.apply_merge()?;
            Ok(v)
        }) {
            Ok(v) => v,
            Err(e) => {
                out.push(Document {
                    index,
                    api_version: String::new(),
                    kind: String::new(),
                    name: None,
                    outcome: Outcome::NotYaml(format!("not valid YAML: {e}")),
                });
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        out.push(validate_document(index, &value));
    }
    out
}

fn validate_document(index: usize, value: &serde_norway::Value) -> Document {
    let text = |v: Option<&serde_norway::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let api_version = text(value.get("apiVersion")).unwrap_or_default();
    let kind = text(value.get("kind")).unwrap_or_default();
    let name = text(value.get("metadata").and_then(|m| m.get("name")));
    let document = |outcome| Document {
        index,
        api_version: api_version.clone(),
        kind: kind.clone(),
        name: name.clone(),
        outcome,
    };
    let expected = format!("{GROUP}/{VERSION}");
    let in_group = api_version.split('/').next() == Some(GROUP);
    if kind != "StreamJob" && !in_group {
        return document(Outcome::Skipped);
    }
    if kind != "StreamJob" {
        let message = if kind.is_empty() {
            "is required: StreamJob".to_string()
        } else {
            format!(
                "{kind:?} is not a kind of {GROUP}; {}",
                match closest(&kind, &["StreamJob"]) {
                    Some(k) => format!("did you mean {k}?"),
                    None => "weir.dev serves only StreamJob".to_string(),
                }
            )
        };
        return document(Outcome::Invalid(vec![FieldError {
            path: "kind".to_string(),
            message,
        }]));
    }
    if api_version != expected {
        return document(Outcome::Invalid(vec![FieldError {
            path: "apiVersion".to_string(),
            message: format!(
                "must be {expected} for kind StreamJob (the version this weir serves), not {api_version:?}"
            ),
        }]));
    }
    let outcome = match serde_json::to_value(value) {
        Err(e) => Outcome::Invalid(vec![FieldError {
            path: String::new(),
            message: format!("cannot be read as JSON (a key that is not a string?): {e}"),
        }]),
        Ok(object) => match validate_object(&object) {
            Ok(_) => Outcome::Valid,
            Err(errors) => Outcome::Invalid(errors),
        },
    };
    document(outcome)
}

/// Check one StreamJob object (already known to be of kind StreamJob, apiVersion
/// `weir.dev/v1alpha1`): every problem of the three passes in the module doc, each naming its
/// field. `Ok` gives the typed job.
pub fn validate_object(object: &Value) -> Result<StreamJob, Vec<FieldError>> {
    let schema = schema();
    let mut object = object.clone();
    prune_nulls(schema, &mut object);

    let mut walk = Walk::default();
    walk.root(schema, &object);
    let found = walk.problems;

    let mut errors = metadata_errors(&object);
    let (job, checked) = match typed(&object) {
        Ok(job) => {
            let checked = spec_errors(&job);
            (Some(job), Some((checked, Vec::new())))
        }
        Err(_) => {
            // Retry without the fields the walk found mistyped, so that the cross-field rules
            // run on the rest: an optional field is removed; a required one gets a stand-in of
            // the right type (the value converted, `"5"` for `5`, or an empty one); a value not
            // in an enum gets the closest allowed value. What validate() would say about a
            // repaired field is not reported: it would be about the repair, not the file.
            let mut repaired = object.clone();
            let mut masked = Vec::new();
            for p in found.iter().filter(|p| p.kind == Kind::Type) {
                let required = is_required(&p.segments);
                let Some((map, key)) = parent(&mut repaired, &p.segments) else {
                    continue;
                };
                match &p.replacement {
                    Some(Replacement::Enum { value, guessed }) => {
                        map.insert(key, value.clone());
                        // The other fields' rules may depend on this one (a window's type):
                        // with the closest value they are checked as the author probably
                        // meant; with a mere stand-in, not at all.
                        masked.push(if *guessed {
                            render(&p.segments[..p.segments.len() - 1])
                        } else {
                            p.error.path.clone()
                        });
                    }
                    Some(Replacement::StandIn(v)) if required => {
                        map.insert(key, v.clone());
                        masked.push(p.error.path.clone());
                    }
                    _ => {
                        map.remove(&key);
                        masked.push(p.error.path.clone());
                    }
                }
            }
            match typed(&repaired) {
                Ok(job) => (None, Some((spec_errors(&job), masked))),
                Err(still) => {
                    // The walk may miss what only the typed parse refuses; report that unless
                    // the walk already named the field.
                    let named = found
                        .iter()
                        .filter(|p| p.kind != Kind::Unknown)
                        .any(|p| related(&p.error.path, &still.path));
                    if !named {
                        errors.push(still);
                    }
                    (None, None)
                }
            }
        }
    };
    match checked {
        None => errors.extend(found.into_iter().map(|p| p.error)),
        Some((validated, masked)) => {
            // validate() re-checks every schema rule with the operator's wording: keep the
            // walk's problem only where validate() said nothing about that field (validate()
            // never sees unknown fields, nor the mistyped ones repaired above), and keep
            // validate()'s only where the retry did not change the object.
            let validated: Vec<FieldError> = validated
                .into_iter()
                .filter(|e| !masked.iter().any(|m| under(&e.path, m)))
                .collect();
            errors.extend(
                found
                    .into_iter()
                    .filter(|p| {
                        matches!(p.kind, Kind::Unknown | Kind::Type)
                            || !validated.iter().any(|e| related(&e.path, &p.error.path))
                    })
                    .map(|p| p.error),
            );
            errors.extend(validated);
        }
    }
    errors.sort_by_cached_key(|e| path_key(&e.path));
    match job {
        Some(job) if errors.is_empty() => Ok(job),
        _ => Err(errors),
    }
}

/// Sorts paths field by field, list indexes as numbers: `spec.aggregations[2]` before
/// `spec.aggregations[10]`, every problem of a field together (a stable sort keeps their order).
fn path_key(path: &str) -> Vec<(String, usize)> {
    let mut key = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        key.push((pieces.next().unwrap_or("").to_string(), 0));
        for index in pieces {
            let n = index.trim_end_matches(']').parse().unwrap_or(usize::MAX);
            key.push((String::new(), n));
        }
    }
    key
}

fn typed(object: &Value) -> Result<StreamJob, FieldError> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            // `.` is serde_path_to_error's root; weir writes it as no path.
            path: if path == "." { String::new() } else { path },
            message: e.inner().to_string(),
        }
    })
}

fn spec_errors(job: &StreamJob) -> Vec<FieldError> {
    job.spec.validate().err().map(|e| e.0).unwrap_or_default()
}

/// `metadata.name` (and `metadata.namespace` when set) as the API server and the operator
/// require them.
fn metadata_errors(object: &Value) -> Vec<FieldError> {
    let fail = |path: &str, message: String| FieldError {
        path: path.to_string(),
        message,
    };
    let metadata = &object["metadata"];
    if !metadata.is_object() {
        return vec![fail("metadata.name", "is required".to_string())];
    }
    let mut errors = Vec::new();
    match &metadata["name"] {
        Value::String(name) => {
            if let Some(problem) = names::job_name_problem(name) {
                errors.push(fail("metadata.name", problem));
            } else if configmap_store(object) {
                // One partition: the fewest a topic has; the operator checks again with the
                // topic's partition count.
                // A two-stage job's merge stage has names of its own, longer.
                let merge = two_stage(object).then_some(1);
                if let Some(problem) = names::checkpoint_names_problem(name, 1, merge) {
                    errors.push(fail("metadata.name", problem));
                }
            }
        }
        Value::Null => errors.push(fail("metadata.name", "is required".to_string())),
        other => errors.push(fail(
            "metadata.name",
            format!("must be a string, not {}", shown(other)),
        )),
    }
    match &metadata["namespace"] {
        Value::Null => {}
        Value::String(ns) => {
            if let Some(problem) = names::namespace_problem(ns) {
                errors.push(fail("metadata.namespace", problem));
            }
        }
        other => errors.push(fail(
            "metadata.namespace",
            format!("must be a string, not {}", shown(other)),
        )),
    }
    errors
}

/// Whether the job keeps checkpoints in ConfigMaps (the default store), read from the object
/// as written, so that it is known even when the spec does not parse.
/// Whether the job runs in two stages ([`crate::StreamJobSpec::co_partitioned`] false), read
/// from the document as it is.
fn two_stage(object: &Value) -> bool {
    let spec = &object["spec"];
    let group_by_empty = spec["groupBy"].as_array().is_none_or(Vec::is_empty);
    let co_partitioned = spec["repartition"]["coPartitioned"]
        .as_bool()
        .unwrap_or(spec["groupByKey"].as_bool() == Some(true) && group_by_empty);
    !co_partitioned
}

fn configmap_store(object: &Value) -> bool {
    let store = &object["spec"]["checkpoint"]["store"];
    store.is_null() || !store["configMap"].is_null()
}

/// Every `pattern` of the schema, compiled once. A pattern that does not compile is left out
/// (and a unit test fails).
fn patterns() -> &'static BTreeMap<String, regex::Regex> {
    static PATTERNS: OnceLock<BTreeMap<String, regex::Regex>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        fn collect(schema: &Value, out: &mut BTreeMap<String, regex::Regex>) {
            match schema {
                Value::Object(map) => {
                    if let Some(Value::String(p)) = map.get("pattern") {
                        if let Ok(re) = regex::Regex::new(p) {
                            out.insert(p.clone(), re);
                        }
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let mut out = BTreeMap::new();
        collect(schema(), &mut out);
        out
    })
}

/// One step of a path into the object.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The path in weir's notation: `spec.aggregations[2].field`.
fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `path` is `base` or inside it (everything is inside the root, the empty path).
fn under(path: &str, base: &str) -> bool {
    base.is_empty()
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// One path is the other or inside it.
fn related(a: &str, b: &str) -> bool {
    under(a, b) || under(b, a)
}

/// What kind of problem the walk found: it decides what the retry removes and what
/// `validate()` may replace.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A field the schema does not have.
    Unknown,
    /// A value the typed parse cannot read (wrong type, not in the enum, out of the integer's
    /// range): removed or replaced for the retry when it is an object's field.
    Type,
    /// A required field is absent.
    Missing,
    /// A readable value that breaks a rule (pattern, length, range, duplicate).
    Rule,
}

#[derive(Debug)]
struct Problem {
    kind: Kind,
    segments: Vec<Segment>,
    error: FieldError,
    /// For a [`Kind::Type`] problem: what the retry may put in the value's place.
    replacement: Option<Replacement>,
}

#[derive(Debug)]
enum Replacement {
    /// An allowed value for one outside an enum: the closest, or the first when none is close
    /// (`guessed`).
    Enum { value: Value, guessed: bool },
    /// A value of the right type, for a required field.
    StandIn(Value),
}

#[derive(Default)]
struct Walk {
    problems: Vec<Problem>,
    at: Vec<Segment>,
}

impl Walk {
    fn fail(&mut self, kind: Kind, message: String) {
        self.problems.push(Problem {
            kind,
            segments: self.at.clone(),
            error: FieldError {
                path: render(&self.at),
                message,
            },
            replacement: None,
        });
    }

    fn inside(&mut self, segment: Segment, f: impl FnOnce(&mut Self)) {
        self.at.push(segment);
        f(self);
        self.at.pop();
    }

    /// The whole object: `apiVersion`, `kind` and `metadata` are the caller's (the CRD schema
    /// does not describe them), `status` is the operator's (ignored on apply), `spec` is walked.
    fn root(&mut self, schema: &Value, object: &Value) {
        let Some(map) = object.as_object() else {
            self.fail(
                Kind::Type,
                format!("a StreamJob must be a map of fields, not {}", shown(object)),
            );
            return;
        };
        const TOP: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];
        for (key, value) in map {
            match key.as_str() {
                "spec" => self.inside(Segment::Key(key.clone()), |w| {
                    w.value(&schema["properties"]["spec"], value)
                }),
                k if TOP.contains(&k) => {}
                _ => self.inside(Segment::Key(key.clone()), |w| {
                    w.fail(Kind::Unknown, suggestion(key, &TOP))
                }),
            }
        }
        if !map.contains_key("spec") {
            self.inside(Segment::Key("spec".to_string()), |w| {
                w.fail(Kind::Missing, "is required".to_string())
            });
        }
    }

    fn value(&mut self, schema: &Value, value: &Value) {
        if value.is_null() {
            // Left after pruning only where the schema allows it.
            return;
        }
        if schema["x-kubernetes-int-or-string"] == true {
            if !(value.is_i64() || value.is_u64() || value.is_string()) {
                self.fail(
                    Kind::Type,
                    format!("must be an integer or a string, not {}", shown(value)),
                );
            }
            return;
        }
        let ty = schema["type"].as_str().unwrap_or("");
        let type_ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            _ => true,
        };
        if !type_ok {
            let article = if matches!(ty, "object" | "array" | "integer") {
                "an"
            } else {
                "a"
            };
            let ty = match ty {
                "object" => "map of fields",
                "array" => "list",
                other => other,
            };
            self.fail(
                Kind::Type,
                format!("must be {article} {ty}, not {}", shown(value)),
            );
            if let Some(p) = self.problems.last_mut() {
                p.replacement = Some(Replacement::StandIn(stand_in(&schema["type"], value)));
            }
            return;
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                let close = value.as_str().and_then(|v| closest(v, &names));
                let hint = close.map_or(String::new(), |n| format!(" (did you mean {n}?)"));
                self.fail(
                    Kind::Type,
                    format!(
                        "must be one of {}, not {}{hint}",
                        names.join(", "),
                        shown(value)
                    ),
                );
                if let Some(p) = self.problems.last_mut() {
                    p.replacement = match close {
                        Some(c) => Some(Replacement::Enum {
                            value: Value::from(c),
                            guessed: false,
                        }),
                        None => allowed.first().map(|v| Replacement::Enum {
                            value: v.clone(),
                            guessed: true,
                        }),
                    };
                }
                return;
            }
        }
        match value {
            Value::Object(map) => self.object(schema, map),
            Value::Array(items) => self.array(schema, items),
            Value::String(s) => self.string(schema, s),
            Value::Number(_) => self.number(schema, value),
            _ => {}
        }
    }

    fn object(&mut self, schema: &Value, map: &serde_json::Map<String, Value>) {
        let properties = schema["properties"].as_object();
        let additional = &schema["additionalProperties"];
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (key, value) in map {
            let segment = Segment::Key(key.clone());
            if let Some(s) = properties.and_then(|p| p.get(key)) {
                self.inside(segment, |w| w.value(s, value));
            } else if additional.is_object() {
                self.inside(segment, |w| w.value(additional, value));
            } else if !preserve && *additional != true {
                let allowed: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                self.inside(segment, |w| {
                    w.fail(Kind::Unknown, suggestion(key, &allowed))
                });
            }
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            if let Some(key) = required.as_str().filter(|k| !map.contains_key(*k)) {
                self.inside(Segment::Key(key.to_string()), |w| {
                    w.fail(Kind::Missing, "is required".to_string())
                });
            }
        }
    }

    fn array(&mut self, schema: &Value, items: &[Value]) {
        let n = items.len();
        if let Some(min) = schema["minItems"].as_u64().filter(|m| (n as u64) < *m) {
            let message = if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must have at least {min} items, not {n}")
            };
            self.fail(Kind::Rule, message);
        }
        if let Some(max) = schema["maxItems"].as_u64().filter(|m| (n as u64) > *m) {
            self.fail(
                Kind::Rule,
                format!("must have at most {max} items, not {n}"),
            );
        }
        for (i, item) in items.iter().enumerate() {
            self.inside(Segment::Index(i), |w| w.value(&schema["items"], item));
        }
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        self.inside(Segment::Index(i), |w| {
                            w.fail(
                                Kind::Rule,
                                format!("{} is listed twice: each at most once", shown(item)),
                            )
                        });
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter().map(|k| item[*k].clone()).collect()
                };
                for (i, item) in items.iter().enumerate() {
                    let key = key_of(item);
                    if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                        let shown_key: Vec<String> = keys
                            .iter()
                            .zip(&key)
                            .map(|(k, v)| format!("{k} {}", shown(v)))
                            .collect();
                        self.inside(Segment::Index(i), |w| {
                            w.fail(
                                Kind::Rule,
                                format!("duplicate {}: each at most once", shown_key.join(", ")),
                            )
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn string(&mut self, schema: &Value, s: &str) {
        let n = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|m| n < *m) {
            let message = if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {min} characters")
            };
            self.fail(Kind::Rule, message);
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|m| n > *m) {
            self.fail(
                Kind::Rule,
                format!("must be at most {max} characters, not {n}"),
            );
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            if patterns().get(pattern).is_some_and(|re| !re.is_match(s)) {
                self.fail(
                    Kind::Rule,
                    format!("{} does not match the pattern {pattern}", shown_str(s)),
                );
            }
        }
    }

    fn number(&mut self, schema: &Value, value: &Value) {
        if schema["type"] == "integer" {
            let fits = match schema["format"].as_str() {
                Some("int32") => value.as_i64().is_some_and(|v| i32::try_from(v).is_ok()),
                _ => value.is_i64(),
            };
            if !fits {
                let bits = if schema["format"] == "int32" { 32 } else { 64 };
                self.fail(
                    Kind::Type,
                    format!("{} does not fit a {bits}-bit integer", shown(value)),
                );
                return;
            }
        }
        let Some(v) = value.as_f64() else { return };
        let (min, max) = (schema["minimum"].as_f64(), schema["maximum"].as_f64());
        if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
            let message = match (min, max) {
                (Some(lo), Some(hi)) => format!(
                    "must be between {} and {}, not {}",
                    number(lo),
                    number(hi),
                    shown(value)
                ),
                (Some(lo), None) => {
                    format!("must be at least {}, not {}", number(lo), shown(value))
                }
                (None, Some(hi)) => format!("must be at most {}, not {}", number(hi), shown(value)),
                (None, None) => return,
            };
            self.fail(Kind::Rule, message);
        }
    }
}

/// A value of type `ty` for a required field whose value has another type: the value
/// converted when it can be (`"5"` for `5`, `5` for `"5"`), else an empty one.
fn stand_in(ty: &Value, value: &Value) -> Value {
    let text = match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    };
    let parsed = |t: &str| serde_json::from_str::<Value>(t).ok();
    match ty.as_str() {
        Some("string") => Value::String(text.unwrap_or_default()),
        Some("integer") => text
            .and_then(|t| parsed(&t))
            .filter(|v| v.is_i64())
            .unwrap_or(Value::from(0)),
        Some("number") => text
            .and_then(|t| parsed(&t))
            .filter(Value::is_number)
            .unwrap_or(Value::from(0)),
        Some("boolean") => Value::Bool(text.as_deref() == Some("true")),
        Some("array") => Value::Array(Vec::new()),
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// Whether the schema requires the field at `segments` in its object.
fn is_required(segments: &[Segment]) -> bool {
    let Some((Segment::Key(key), parents)) = segments.split_last() else {
        return false;
    };
    let mut node = schema();
    for s in parents {
        node = match s {
            Segment::Key(k) => match node["properties"].get(k) {
                Some(n) => n,
                None => &node["additionalProperties"],
            },
            Segment::Index(_) => &node["items"],
        };
    }
    node["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|k| k == key.as_str()))
}

/// A schema bound as written (`1024`, `0.5`).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

/// A value in a message: strings quoted, long values cut.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => shown_str(s),
        Value::Object(_) => "a map of fields".to_string(),
        Value::Array(_) => "a list".to_string(),
        other => {
            let s = other.to_string();
            if s.len() > 40 {
                format!("{}...", s.chars().take(40).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn shown_str(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{:?}...", s.chars().take(40).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

/// Drop the nulls the API server would drop: a field set to `null` where the schema does not
/// say `nullable` is pruned before validation, as if it were absent.
fn prune_nulls(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            let properties = &schema["properties"];
            let additional = &schema["additionalProperties"];
            map.retain(|k, v| {
                let s = properties.get(k).unwrap_or(additional);
                !(v.is_null() && s.is_object() && s["nullable"] != true)
            });
            for (k, v) in map.iter_mut() {
                let s = properties.get(k.as_str()).unwrap_or(additional);
                prune_nulls(s, v);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| prune_nulls(&schema["items"], item)),
        _ => {}
    }
}

/// The object holding the field at `segments`, and the field's name; `None` when the path
/// ends in a list index (removing an item would renumber the others and the paths in later
/// messages) or leads nowhere.
fn parent<'a>(
    value: &'a mut Value,
    segments: &[Segment],
) -> Option<(&'a mut serde_json::Map<String, Value>, String)> {
    let (Segment::Key(last), parents) = segments.split_last()? else {
        return None;
    };
    let mut node = value;
    for s in parents {
        node = match (s, node) {
            (Segment::Key(k), Value::Object(map)) => map.get_mut(k)?,
            (Segment::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    match node {
        Value::Object(map) => Some((map, last.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        let text = include_str!("../../examples/payments-per-merchant.yaml");
        serde_norway::from_str(text).expect("example is YAML")
    }

    fn errors(object: &Value) -> Vec<String> {
        match validate_object(object) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_schema_pattern_compiles() {
        fn count(schema: &Value) -> usize {
            match schema {
                Value::Object(m) => {
                    usize::from(m.get("pattern").is_some_and(Value::is_string))
                        + m.values().map(count).sum::<usize>()
                }
                Value::Array(items) => items.iter().map(count).sum(),
                _ => 0,
            }
        }
        assert!(count(schema()) > 0);
        let distinct: std::collections::BTreeSet<_> = {
            fn collect<'a>(s: &'a Value, out: &mut std::collections::BTreeSet<&'a str>) {
                match s {
                    Value::Object(m) => {
                        if let Some(p) = m.get("pattern").and_then(Value::as_str) {
                            out.insert(p);
                        }
                        m.values().for_each(|v| collect(v, out));
                    }
                    Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                    _ => {}
                }
            }
            let mut out = std::collections::BTreeSet::new();
            collect(schema(), &mut out);
            out
        };
        assert_eq!(patterns().len(), distinct.len());
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(errors(&example()), Vec::<String>::new());
    }

    #[test]
    fn type_errors_in_several_fields_all_show() {
        let mut job = example();
        job["spec"]["parallelism"] = json!("three");
        job["spec"]["window"]["allowedLateness"] = json!(10);
        job["spec"]["aggregations"][1]["fn"] = json!("summ");
        job["spec"]["groupByKey"] = json!("yes");
        assert_eq!(
            errors(&job),
            [
                "spec.aggregations[1].fn: must be one of count, sum, min, max, mean, stddev, \
                 variance, countDistinct, percentile, first, last, not \"summ\" (did you mean sum?)",
                "spec.groupByKey: must be a boolean, not \"yes\"",
                "spec.parallelism: must be an integer, not \"three\"",
                "spec.window.allowedLateness: must be a string, not 10",
            ]
        );
    }

    #[test]
    fn cross_field_rules_still_run_when_other_fields_are_mistyped() {
        let mut job = example();
        job["spec"]["parallelism"] = json!("three");
        job["spec"]["window"]["slide"] = json!("10s"); // only for hopping windows
        job["spec"]["aggregations"][3]["quantile"] = json!(2.0);
        assert_eq!(
            errors(&job),
            [
                "spec.aggregations[3].quantile: must be strictly between 0 and 1, not 2",
                "spec.parallelism: must be an integer, not \"three\"",
                "spec.window.slide: is only used by hopping windows",
            ]
        );
    }

    #[test]
    fn a_misspelt_required_value_is_named_and_the_other_rules_still_run() {
        let mut job = example();
        job["spec"]["aggregations"][1]["fn"] = json!("summ");
        job["spec"]["aggregations"][1]["quantile"] = json!(0.5);
        job["spec"]["window"]["slide"] = json!("10s");
        let e = errors(&job);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("spec.aggregations[1].fn: must be one of count, sum"));
        assert!(e[0].ends_with("not \"summ\" (did you mean sum?)"), "{e:?}");
        // Checked as the sum it probably is.
        assert_eq!(
            e[1],
            "spec.aggregations[1].quantile: is only used by percentile"
        );
        assert_eq!(e[2], "spec.window.slide: is only used by hopping windows");

        // A value close to none: the rules of its object are not checked (they would be
        // about a guess), the others are.
        job["spec"]["aggregations"][1]["fn"] = json!("zzzzzz");
        let e = errors(&job);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(!e[0].contains("did you mean"), "{e:?}");
        assert_eq!(e[1], "spec.window.slide: is only used by hopping windows");
    }

    #[test]
    fn a_mistyped_required_field_does_not_stop_the_other_rules() {
        let mut job = example();
        job["spec"]["source"]["eventTime"]["field"] = json!(5); // required
        job["spec"]["sink"]["kafka"]["topic"] = json!({"name": "x"}); // required
        job["spec"]["window"]["slide"] = json!("10s");
        job["spec"]["aggregations"][0]["field"] = json!("amount"); // count takes none
        assert_eq!(
            errors(&job),
            [
                "spec.aggregations[0].field: count takes no field: it counts records",
                "spec.sink.kafka.topic: must be a string, not a map of fields",
                "spec.source.eventTime.field: must be a string, not 5",
                "spec.window.slide: is only used by hopping windows",
            ]
        );
        assert!(is_required(&[
            Segment::Key("spec".into()),
            Segment::Key("aggregations".into()),
            Segment::Index(0),
            Segment::Key("fn".into()),
        ]));
        assert!(!is_required(&[
            Segment::Key("spec".into()),
            Segment::Key("parallelism".into()),
        ]));
    }

    #[test]
    fn a_problem_found_by_the_schema_and_by_validate_is_reported_once() {
        let mut job = example();
        job["spec"]["parallelism"] = json!(0);
        job["spec"]["window"]["size"] = json!("1d");
        job["spec"]["groupBy"] = json!(["merchant", "merchant"]);
        job["spec"]["aggregations"][1]["name"] = json!("payments");
        let errors = errors(&job);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        for field in [
            "spec.parallelism: must be between 1 and 1024, not 0",
            "spec.window.size: \"1d\" is not a duration",
            "spec.groupBy[1]: \"merchant\" is listed twice",
            "spec.aggregations[1].name: duplicate output name",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field}: {errors:#?}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_named_with_a_suggestion_even_past_a_type_error() {
        let mut job = example();
        job["spec"]["window"]["allowedLatness"] = json!("10s");
        job["spec"]["parallelism"] = json!([1]);
        job["spec"]["sink"]["kafka"]["topik"] = json!("x");
        job["specc"] = json!({});
        assert_eq!(
            errors(&job),
            [
                "spec.parallelism: must be an integer, not a list",
                "spec.sink.kafka.topik: unknown field; did you mean topic?",
                "spec.window.allowedLatness: unknown field; did you mean allowedLateness?",
                "specc: unknown field; did you mean spec?",
            ]
        );
    }

    #[test]
    fn a_missing_required_field_and_a_typo_of_it() {
        let mut job = example();
        let window = job["spec"]["window"].take();
        job["spec"].as_object_mut().map(|s| s.remove("window"));
        job["spec"]["windw"] = window;
        job["spec"]["sink"]["kafka"]["topic"] = json!(7);
        assert_eq!(
            errors(&job),
            [
                "spec.sink.kafka.topic: must be a string, not 7",
                "spec.window: is required",
                "spec.windw: unknown field; did you mean window?",
            ]
        );
    }

    #[test]
    fn nulls_are_absent_unless_the_schema_allows_them() {
        let mut job = example();
        job["spec"]["parallelism"] = Value::Null; // pruned: the default applies
        job["spec"]["window"]["allowedLateness"] = Value::Null; // nullable
        assert_eq!(errors(&job), Vec::<String>::new());
        job["spec"]["sink"] = Value::Null; // pruned: then missing
        assert_eq!(errors(&job), ["spec.sink: is required"]);
    }

    #[test]
    fn metadata_name_is_a_dns_subdomain_that_leaves_room_for_checkpoint_names() {
        let mut job = example();
        job["metadata"]["name"] = json!("Payments_2");
        let e = errors(&job);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("metadata.name: \"Payments_2\" is not a valid name"));

        job["metadata"]["name"] = json!("p".repeat(241));
        let e = errors(&job);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("too long for the checkpoint ConfigMaps"),
            "{e:?}"
        );

        // The example runs in two stages: the merge stage's names are 6 characters longer.
        job["metadata"]["name"] = json!("p".repeat(236));
        let e = errors(&job);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("too long for the merge stage's checkpoint ConfigMaps"),
            "{e:?}"
        );
        job["spec"]["repartition"] = json!({"coPartitioned": true});
        assert_eq!(errors(&job), Vec::<String>::new(), "one stage: it fits");

        // With an object store, no checkpoint ConfigMaps: the name only has to be a name.
        job["spec"]["checkpoint"]["store"] = json!({"objectStore": {"url": "s3://b/p"}});
        assert_eq!(errors(&job), Vec::<String>::new());

        job["metadata"] = json!({"namespace": "Shop"});
        let e = errors(&job);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0], "metadata.name: is required");
        assert!(e[1].starts_with("metadata.namespace: \"Shop\""), "{e:?}");
    }

    #[test]
    fn a_stream_mixes_kinds_and_reports_each_stream_job() {
        let job = serde_norway::to_string(&example()).expect("yaml");
        let mut bad = example();
        bad["spec"]["parallelism"] = json!(0);
        bad["metadata"]["name"] = json!("bad");
        let bad = serde_norway::to_string(&bad).expect("yaml");
        let text = format!(
            "---\n{job}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n---\n{bad}\
             ---\napiVersion: weir.dev/v1\nkind: StreamJob\nmetadata: {{name: old}}\n\
             ---\napiVersion: weir.dev/v1alpha1\nkind: Streamjob\n"
        );
        let docs = validate_documents(&text);
        let summary: Vec<_> = docs
            .iter()
            .map(|d| {
                (
                    d.index,
                    d.kind.as_str(),
                    d.name.as_deref(),
                    d.errors().len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, "StreamJob", Some("payments-per-merchant"), 0),
                (2, "ConfigMap", Some("c"), 0),
                (4, "StreamJob", Some("bad"), 1),
                (5, "StreamJob", Some("old"), 1),
                (6, "Streamjob", None, 1),
            ]
        );
        assert_eq!(docs[0].outcome, Outcome::Valid);
        assert_eq!(docs[1].outcome, Outcome::Skipped);
        assert_eq!(docs[3].errors()[0].path, "apiVersion");
        assert!(
            docs[4].errors()[0]
                .message
                .contains("did you mean StreamJob?"),
            "{:?}",
            docs[4]
        );
    }

    #[test]
    fn merge_keys_are_applied_as_kubectl_applies_them() {
        let text = "defaults: &kafka {bootstrapServers: kafka:9092}
---
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: merged}
spec:
  source:
    kafka: {<<: *kafka, topic: payments}
  window: {type: tumbling, size: 1m}
  aggregations: [{name: n, fn: count}]
  sink: {kafka: {topic: out}}
";
        // An anchor is local to its document: the second one cannot use the first's.
        let docs = validate_documents(text);
        assert!(
            matches!(docs.last().map(|d| &d.outcome), Some(Outcome::NotYaml(_))),
            "{docs:?}"
        );
        let text = text
            .replacen(
                "defaults: &kafka {bootstrapServers: kafka:9092}\n---\n",
                "",
                1,
            )
            .replace(
                "kafka: {<<: *kafka, topic: payments}",
                "kafka: {<<: {bootstrapServers: kafka:9092}, topic: payments}",
            );
        let docs = validate_documents(&text);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].outcome, Outcome::Valid, "{docs:?}");
    }

    #[test]
    fn a_yaml_error_ends_the_stream_with_its_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\nspec: [unclosed\n";
        let docs = validate_documents(text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        match &docs[1].outcome {
            Outcome::NotYaml(m) => assert!(m.contains("line"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
