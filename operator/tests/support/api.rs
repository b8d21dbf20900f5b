//! A fake Kubernetes API server behind a real `kube::Client` (kube-rs controller-rs
//! `fixtures.rs` pattern): a `tower_test` mock service whose requests a task answers with a
//! caller-supplied function. Shared by the reconcile wiring tests (`tests/controller.rs`) and
//! the 1,000-job benchmark (`benches/reconcile.rs`, which includes this file by `#[path]`).
#![allow(dead_code)]

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request as the API server saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The `Accept` header: metadata-only lists and watches ask for `PartialObjectMetadata`.
    pub accept: String,
    pub body: Value,
}

impl Call {
    /// The call a request makes.
    pub fn new(parts: &http::request::Parts, body: &[u8]) -> Call {
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: header(http::header::CONTENT_TYPE),
            accept: header(http::header::ACCEPT),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        }
    }

    /// `METHOD path` — what the sequence assertions compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The `METHOD path` of every call that is not a read, in order.
pub fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method != "GET")
        .map(Call::line)
        .collect()
}

/// A `Status` failure body, as the API server sends with an error code.
pub fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request goes to the returned handle (give it to [`serve`]).
pub fn mock_client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// Answers every request with `answer` until every clone of the client is dropped.
pub async fn serve(mut handle: Handle, mut answer: impl FnMut(&Call) -> (StatusCode, Value)) {
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let call = Call::new(&parts, &bytes);
        let (code, reply) = answer(&call);
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response");
        send.send_response(response);
    }
}

/// The (group, resource, verb) an API request is authorised as.
pub fn rbac_of(c: &Call) -> (String, String, &'static str) {
    let parts: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/NS/RES[/NAME[/SUB]] or /apis/GROUP/VERSION/namespaces/NS/RES[/...]
    let (group, rest) = match parts.first() {
        Some(&"api") => (String::new(), &parts[2..]),
        _ => (parts[1].to_string(), &parts[3..]),
    };
    assert_eq!(rest.first(), Some(&"namespaces"), "{}", c.path);
    let resource = match rest.get(4) {
        Some(sub) => format!("{}/{sub}", rest[2]),
        None => rest[2].to_string(),
    };
    let named = rest.len() > 3;
    let verb = match (c.method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if c.query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb)
}

/// Panics unless the operator's RBAC (`API_CALLS`) allows `c`.
pub fn assert_allowed(c: &Call) {
    let (group, resource, verb) = rbac_of(c);
    assert!(
        weir_operator::rbac::API_CALLS
            .iter()
            .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb)),
        "{} needs {verb} on {group}/{resource}, missing from API_CALLS",
        c.line()
    );
}
