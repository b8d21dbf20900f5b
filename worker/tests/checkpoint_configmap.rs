//! The ConfigMap store against a mocked API server: each step asserts the request the store
//! sends (method, path, body) and plays the API server's answer.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};
use weir_worker::checkpoint::{
    CheckpointStore, ConfigMapStore, PartitionCheckpoint, Progress, StoreError, Version, FORMAT,
};

type ApiServer = Handle<Request<Body>, Response<Body>>;

const NS: &str = "default";
const PREFIX: &str = "payments-checkpoint";

fn setup() -> (ConfigMapStore, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    (ConfigMapStore::new(client, NS, PREFIX), handle)
}

fn checkpoint(epoch: i64) -> PartitionCheckpoint {
    PartitionCheckpoint {
        format: FORMAT,
        topic: "payments".to_owned(),
        partition: 0,
        epoch,
        owner: "weir-worker-0".to_owned(),
        written_at_ms: 1_700_000_000_000,
        progress: Some(Progress {
            next_offset: 10,
            replay_from: 4,
            replay_max_event_time: None,
            watermark: Some(1_700_000_000_000),
            emitted_through: None,
            ..Default::default()
        }),
        definition: None,
        results_from: None,
        reset: None,
        released: false,
        state_full: None,
    }
}

const ITEM: &str = "/api/v1/namespaces/default/configmaps/payments-checkpoint-0";
const COLLECTION: &str = "/api/v1/namespaces/default/configmaps";

/// The next request, which must be `method path`; returns its JSON body (Null if empty).
async fn expect(
    api: &mut ApiServer,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client hung up");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    if method == Method::PUT || method == Method::POST {
        // Every write names the workers' field manager (else managedFields says `unknown`).
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("fieldManager=weir-worker"),
            "{method} {path}?{query}"
        );
    }
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request body is JSON")
    };
    (body, send)
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response");
    send.send_response(response);
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("test: {reason}"), "reason": reason, "code": code})
}

fn config_map(resource_version: &str, data: Option<&PartitionCheckpoint>) -> Value {
    let mut cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "payments-checkpoint-0", "namespace": NS,
            "resourceVersion": resource_version,
            "labels": {"app.kubernetes.io/managed-by": "weir", "weir.dev/job": "payments"},
            "ownerReferences": [{"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
                                 "name": "payments", "uid": "1234"}]
        }
    });
    if let Some(cp) = data {
        cm["data"] = json!({"checkpoint.json": serde_json::to_string(cp).expect("json")});
    }
    cm
}

/// The record a written ConfigMap carries.
fn stored(body: &Value) -> PartitionCheckpoint {
    let text = body["data"]["checkpoint.json"]
        .as_str()
        .expect("checkpoint.json in data");
    serde_json::from_str(text).expect("a checkpoint record")
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("store call hung")
}

#[tokio::test]
async fn get_of_a_missing_config_map_is_none() {
    let (store, mut api) = setup();
    let (got, ()) = tokio::join!(within(store.get(0)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 404, &status(404, "NotFound"));
    });
    assert!(got.expect("get").is_none());
    assert_eq!(store.describe(), "configmap default/payments-checkpoint-*");
}

#[tokio::test]
async fn get_reads_the_record_and_its_resource_version() {
    let (store, mut api) = setup();
    let cp = checkpoint(3);
    let (got, ()) = tokio::join!(within(store.get(0)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 200, &config_map("42", Some(&cp)));
    });
    let got = got.expect("get").expect("a record");
    assert_eq!(got.checkpoint, cp);
    assert_eq!(got.version, Version("42".to_owned()));

    // Unreadable data is Corrupt, not a crash and not "nothing".
    let (got, ()) = tokio::join!(within(store.get(0)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        let mut cm = config_map("43", None);
        cm["data"] = json!({"checkpoint.json": "{\"format\": 99}"});
        respond(send, 200, &cm);
    });
    assert!(
        matches!(got, Err(StoreError::Corrupt { partition: 0, .. })),
        "{got:?}"
    );
}

#[tokio::test]
async fn first_write_creates_the_config_map() {
    let (store, mut api) = setup();
    let cp = checkpoint(1);
    let (written, ()) = tokio::join!(within(store.put(&cp, None)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 404, &status(404, "NotFound"));
        let (body, send) = expect(&mut api, Method::POST, COLLECTION).await;
        assert_eq!(body["metadata"]["name"], "payments-checkpoint-0");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "weir"
        );
        assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
        assert_eq!(stored(&body), cp);
        let mut answer = body.clone();
        answer["metadata"]["resourceVersion"] = json!("100");
        respond(send, 201, &answer);
    });
    assert_eq!(written.expect("create"), Version("100".to_owned()));
}

#[tokio::test]
async fn create_racing_another_creator_is_a_conflict() {
    let (store, mut api) = setup();
    let cp1 = checkpoint(1);
    let (written, ()) = tokio::join!(within(store.put(&cp1, None)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 404, &status(404, "NotFound"));
        let (_, send) = expect(&mut api, Method::POST, COLLECTION).await;
        respond(send, 409, &status(409, "AlreadyExists"));
    });
    assert!(
        matches!(written, Err(StoreError::Conflict { partition: 0 })),
        "{written:?}"
    );

    // A record already there: Conflict without writing anything.
    let cp2 = checkpoint(2);
    let (written, ()) = tokio::join!(within(store.put(&cp2, None)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 200, &config_map("5", Some(&checkpoint(1))));
    });
    assert!(
        matches!(written, Err(StoreError::Conflict { partition: 0 })),
        "{written:?}"
    );
    let extra = tokio::time::timeout(Duration::from_millis(200), api.next_request()).await;
    assert!(extra.is_err(), "no write may follow a conflict");
}

#[tokio::test]
async fn first_write_fills_a_precreated_config_map_by_replace() {
    let (store, mut api) = setup();
    let cp = checkpoint(1);
    let (written, ()) = tokio::join!(within(store.put(&cp, None)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 200, &config_map("7", None));
        let (body, send) = expect(&mut api, Method::PUT, ITEM).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(stored(&body), cp);
        let mut answer = body.clone();
        answer["metadata"]["resourceVersion"] = json!("8");
        respond(send, 200, &answer);
    });
    assert_eq!(written.expect("fill"), Version("8".to_owned()));
}

#[tokio::test]
async fn replace_carries_the_expected_resource_version_and_keeps_metadata() {
    let (store, mut api) = setup();
    let old = checkpoint(1);
    let new = checkpoint(2);
    // Read first, as a lease does.
    let (got, ()) = tokio::join!(within(store.get(0)), async {
        let (_, send) = expect(&mut api, Method::GET, ITEM).await;
        respond(send, 200, &config_map("41", Some(&old)));
    });
    let version = got.expect("get").expect("record").version;

    let (written, ()) = tokio::join!(within(store.put(&new, Some(&version))), async {
        let (body, send) = expect(&mut api, Method::PUT, ITEM).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["metadata"]["name"], "payments-checkpoint-0");
        // What the operator set is kept: a replace must not orphan the ConfigMap.
        assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "payments");
        assert_eq!(body["metadata"]["labels"]["weir.dev/job"], "payments");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "weir"
        );
        assert_eq!(stored(&body), new);
        let mut answer = body.clone();
        answer["metadata"]["resourceVersion"] = json!("42");
        respond(send, 200, &answer);
    });
    assert_eq!(written.expect("replace"), Version("42".to_owned()));
}

#[tokio::test]
async fn a_409_on_replace_is_a_conflict() {
    let (store, mut api) = setup();
    let stale = Version("41".to_owned());
    let cp3 = checkpoint(1);
    let (written, ()) = tokio::join!(within(store.put(&cp3, Some(&stale))), async {
        let (body, send) = expect(&mut api, Method::PUT, ITEM).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        respond(send, 409, &status(409, "Conflict"));
    });
    assert!(
        matches!(written, Err(StoreError::Conflict { partition: 0 })),
        "{written:?}"
    );

    // Other API failures are Backend errors, not conflicts (they must not look like fencing).
    let cp4 = checkpoint(1);
    let (written, ()) = tokio::join!(within(store.put(&cp4, Some(&stale))), async {
        let (_, send) = expect(&mut api, Method::PUT, ITEM).await;
        respond(send, 403, &status(403, "Forbidden"));
    });
    assert!(
        matches!(
            written,
            Err(StoreError::Backend {
                action: "write",
                ..
            })
        ),
        "{written:?}"
    );
}

/// The merge stage's records where the previous version kept them (`<job>-merge-checkpoint-<p>`,
/// read only) and where they are now (`<job>-checkpoint-merge-<p>`, pre-created empty by the
/// operator): a lease resumes exactly from the legacy record, claims and commits at the new
/// name only, and never writes the legacy name (docs/checkpoints.md, "Migration").
#[tokio::test]
async fn the_merge_stage_resumes_from_its_legacy_config_map_and_writes_only_the_new_one() {
    use std::sync::Arc;
    use weir_worker::checkpoint::{LegacyAccess, MigratingStore, PartitionLease};
    const NEW: &str = "/api/v1/namespaces/default/configmaps/payments-checkpoint-merge-0";
    const OLD: &str = "/api/v1/namespaces/default/configmaps/payments-merge-checkpoint-0";
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let store = |prefix: &str| Arc::new(ConfigMapStore::new(client.clone(), NS, prefix));
    let migrating: Arc<dyn CheckpointStore> = Arc::new(MigratingStore::new(
        store("payments-checkpoint-merge"),
        store("payments-merge-checkpoint"),
        "payments",
        LegacyAccess::Read,
    ));
    let legacy = checkpoint(3);
    let (acquired, ()) = tokio::join!(
        within(PartitionLease::acquire(
            migrating.clone(),
            "payments",
            0,
            4,
            "weir-worker-1"
        )),
        async {
            // The new name is empty (pre-created), the legacy one holds the record.
            let (_, send) = expect(&mut api, Method::GET, NEW).await;
            respond(send, 200, &config_map("7", None));
            let (_, send) = expect(&mut api, Method::GET, OLD).await;
            respond(send, 200, &config_map("30", Some(&legacy)));
            // The claim fills the new one, conditional on its version.
            let (_, send) = expect(&mut api, Method::GET, NEW).await;
            respond(send, 200, &config_map("7", None));
            let (body, send) = expect(&mut api, Method::PUT, NEW).await;
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            let claim = stored(&body);
            assert_eq!((claim.epoch, claim.owner.as_str()), (4, "weir-worker-1"));
            assert_eq!(claim.progress, legacy.progress);
            let mut answer = body.clone();
            answer["metadata"]["resourceVersion"] = json!("8");
            respond(send, 200, &answer);
        }
    );
    let (mut lease, resume) = acquired.expect("acquire");
    assert_eq!(
        resume, legacy.progress,
        "resumed exactly from the legacy record"
    );

    let next = Progress {
        next_offset: 20,
        ..legacy.progress.clone().expect("progress")
    };
    let (committed, ()) = tokio::join!(within(lease.commit(next.clone())), async {
        let (body, send) = expect(&mut api, Method::PUT, NEW).await;
        assert_eq!(body["metadata"]["resourceVersion"], "8");
        assert_eq!(stored(&body).progress, Some(next.clone()));
        let mut answer = body.clone();
        answer["metadata"]["resourceVersion"] = json!("9");
        respond(send, 200, &answer);
    });
    committed.expect("commit");
    let extra = tokio::time::timeout(Duration::from_millis(200), api.next_request()).await;
    assert!(
        extra.is_err(),
        "nothing more, and never a write of the legacy name"
    );

    // A record of another topic under the legacy name (the job `payments-merge`'s stage 1) is
    // not taken: the lease starts afresh at the new name.
    let other = PartitionCheckpoint {
        topic: "orders".to_owned(),
        ..checkpoint(9)
    };
    let fresh: Arc<dyn CheckpointStore> = Arc::new(MigratingStore::new(
        store("payments-checkpoint-merge"),
        store("payments-merge-checkpoint"),
        "payments",
        LegacyAccess::Read,
    ));
    let (got, ()) = tokio::join!(within(fresh.get(0)), async {
        let (_, send) = expect(&mut api, Method::GET, NEW).await;
        respond(send, 404, &status(404, "NotFound"));
        let (_, send) = expect(&mut api, Method::GET, OLD).await;
        respond(send, 200, &config_map("31", Some(&other)));
    });
    assert!(got.expect("get").is_none(), "another stream's record");
}
