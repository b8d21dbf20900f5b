//! Leader election against a mocked API server: each test scripts the Lease the API server
//! holds and checks the requests the elector makes.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{json, Value};
use weir_operator::leader::{LeaderElector, LeaseConfig};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn elector() -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let cfg = LeaseConfig {
        name: "weir-operator".to_string(),
        identity: "op-a".to_string(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    (
        LeaderElector::new(Api::<Lease>::namespaced(client, "weir"), cfg),
        handle,
    )
}

/// Answers the next request with `code` and `reply`; returns (method, path, body).
async fn expect(handle: &mut Handle, code: u16, reply: Value) -> (String, String, Value) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("an expected API call never came")
        .expect("client gone");
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).expect("code"))
            .body(Body::from(serde_json::to_vec(&reply).expect("json")))
            .expect("response"),
    );
    (
        parts.method.to_string(),
        parts.uri.path().to_string(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/weir/leases/weir-operator";

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": "NotFound", "code": 404})
}

fn lease(holder: &str, renew: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "weir-operator", "namespace": "weir", "resourceVersion": "7"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "renewTime": renew, "leaseTransitions": 2}})
}

#[tokio::test]
async fn absent_lease_is_created_and_held() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        let get = expect(&mut h, 404, not_found()).await;
        let create = expect(&mut h, 201, lease("op-a", "2026-01-01T00:00:00.000000Z")).await;
        (get, create)
    });
    assert!(e.try_acquire_or_renew().await.expect("call"));
    let (get, create) = server.await.expect("server");
    assert_eq!((get.0.as_str(), get.1.as_str()), ("GET", PATH));
    assert_eq!(create.0, "POST");
    assert_eq!(create.2["spec"]["holderIdentity"], json!("op-a"));
    assert_eq!(create.2["spec"]["leaseDurationSeconds"], json!(15));
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_left_alone() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, 200, lease("op-b", "2026-01-01T00:00:00.000000Z")).await;
        h
    });
    assert!(!e.try_acquire_or_renew().await.expect("call"));
    let mut h = server.await.expect("server");
    // No write followed the read.
    drop(e);
    assert!(h.next_request().await.is_none());
}

#[tokio::test]
async fn own_lease_is_renewed_conditionally_on_its_resource_version() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, 200, lease("op-a", "2026-01-01T00:00:00.000000Z")).await;
        expect(&mut h, 200, lease("op-a", "2026-01-01T00:00:05.000000Z")).await
    });
    assert!(e.try_acquire_or_renew().await.expect("call"));
    let (method, path, body) = server.await.expect("server");
    assert_eq!((method.as_str(), path.as_str()), ("PUT", PATH));
    assert_eq!(body["metadata"]["resourceVersion"], json!("7"));
    assert_eq!(body["spec"]["holderIdentity"], json!("op-a"));
    // Renewing is not a transition.
    assert_eq!(body["spec"]["leaseTransitions"], json!(2));
}

#[tokio::test]
async fn a_conflicting_write_loses_the_race() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, 200, lease("", "2026-01-01T00:00:00.000000Z")).await;
        expect(
            &mut h,
            409,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "Conflict", "code": 409}),
        )
        .await
    });
    // A released Lease (no holder) is taken at once, unless another replica wrote first.
    assert!(!e
        .try_acquire_or_renew()
        .await
        .expect("a conflict is not an error"));
    let (method, _, body) = server.await.expect("server");
    assert_eq!(method, "PUT");
    assert_eq!(body["spec"]["leaseTransitions"], json!(3));
}

/// Log lines written while `f` runs on this thread.
async fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let out = f.await;
    let text = String::from_utf8_lossy(&buf.0.lock().expect("log buffer")).into_owned();
    (out, text)
}

#[tokio::test]
async fn release_clears_the_holder_and_says_so_in_the_log() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, 200, lease("op-a", "2026-01-01T00:00:00.000000Z")).await;
        expect(&mut h, 200, lease("", "2026-01-01T00:00:00.000000Z")).await
    });
    let (released, log) = logged(e.release()).await;
    assert!(released);
    let (method, path, body) = server.await.expect("server");
    assert_eq!((method.as_str(), path.as_str()), ("PUT", PATH));
    assert_eq!(body["metadata"]["resourceVersion"], json!("7"));
    assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
    assert!(log.contains("released the lease"), "{log}");
    assert!(log.contains("weir-operator"), "{log}");
}

#[tokio::test]
async fn a_lease_held_by_another_replica_is_not_released() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, 200, lease("op-b", "2026-01-01T00:00:00.000000Z")).await;
        h
    });
    let (released, log) = logged(e.release()).await;
    assert!(!released);
    let mut h = server.await.expect("server");
    drop(e);
    assert!(h.next_request().await.is_none(), "no write");
    assert!(log.contains("held by another replica"), "{log}");
}
