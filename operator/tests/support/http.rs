//! The fake API server (`apiserver.rs`) over HTTP, with watches streamed as their events are
//! logged: what a controller with watches needs (the reconcile benchmark, `benches/reconcile.rs`,
//! in a separate process; the storm wiring test, `tests/storm.rs`, in its own runtime). A file
//! that includes it also declares the modules `api` and `apiserver`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::api::Call;
use crate::apiserver::{self, FakeApiServer};

/// The fake API server and the resource version its watches have been told about.
pub struct Shared {
    pub server: Mutex<FakeApiServer>,
    events: tokio::sync::watch::Sender<u64>,
    /// Every call but watches, in order, when recording ([`Shared::recording`]).
    calls: Option<Mutex<Vec<Call>>>,
}

impl Shared {
    pub fn new(server: FakeApiServer) -> Arc<Shared> {
        Arc::new(Shared {
            events: tokio::sync::watch::channel(server.resource_version()).0,
            server: Mutex::new(server),
            calls: None,
        })
    }

    /// Like [`Shared::new`], and keeps every call for [`Shared::calls`].
    pub fn recording(server: FakeApiServer) -> Arc<Shared> {
        Arc::new(Shared {
            events: tokio::sync::watch::channel(server.resource_version()).0,
            server: Mutex::new(server),
            calls: Some(Mutex::default()),
        })
    }

    /// The calls recorded so far (none unless recording).
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .as_ref()
            .map(|c| c.lock().expect("calls").clone())
            .unwrap_or_default()
    }

    /// Runs `f` on the server, then wakes the watches if it wrote something.
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeApiServer) -> R) -> R {
        let mut server = self.server.lock().expect("server");
        let r = f(&mut server);
        let rv = server.resource_version();
        self.events
            .send_if_modified(|seen| std::mem::replace(seen, rv) != rv);
        r
    }
}

/// `GET` of this path answers [`stats`] instead of an API object.
pub const STATS_PATH: &str = "/fake/stats";

/// Requests by kind since the last stats call, and whether every job is Ready.
pub fn stats(server: &mut FakeApiServer) -> Value {
    let jobs = server.all("/apis/weir.dev/v1alpha1/streamjobs");
    let ready = jobs
        .iter()
        .filter(|j| {
            j["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count();
    json!({
        "jobs": jobs.len(),
        "ready": ready,
        "statefulsets": server.all("/apis/apps/v1/statefulsets").len(),
        "objects": server.len(),
        "requests": server.take_counts(),
    })
}

/// The requests of a [`stats`] answer that write: every method but GET and WATCH.
pub fn writes(stats: &Value) -> u64 {
    stats["requests"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("GET ") && !k.starts_with("WATCH "))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

async fn answer(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let call = Call::new(&parts, &bytes);
    let respond = |code: http::StatusCode, body: axum::body::Body| {
        axum::response::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(body)
            .expect("response")
    };
    if call.path == STATS_PATH {
        let v = shared.with(stats);
        return respond(http::StatusCode::OK, axum::body::Body::from(v.to_string()));
    }
    let watch = call.method == "GET" && apiserver::query(&call, "watch").as_deref() == Some("true");
    if watch {
        let start = shared.with(|s| s.watch_start(&call));
        let Some((filter, from)) = start else {
            return respond(http::StatusCode::NOT_FOUND, axum::body::Body::empty());
        };
        // Events as they are logged, until the client goes away (or the process ends).
        let rx = shared.events.subscribe();
        let stream = futures::stream::unfold(
            (shared.clone(), filter, from, rx),
            |(shared, filter, mut from, mut rx)| async move {
                loop {
                    rx.borrow_and_update();
                    let (bytes, next) = shared
                        .server
                        .lock()
                        .expect("server")
                        .watch_events(&filter, from);
                    from = next;
                    if !bytes.is_empty() {
                        let chunk: Result<axum::body::Bytes, std::convert::Infallible> =
                            Ok(bytes.into());
                        return Some((chunk, (shared, filter, from, rx)));
                    }
                    rx.changed().await.ok()?;
                }
            },
        );
        return respond(http::StatusCode::OK, axum::body::Body::from_stream(stream));
    }
    if let Some(calls) = &shared.calls {
        calls.lock().expect("calls").push(call.clone());
    }
    let (code, reply) = shared.with(|s| s.handle(&call));
    respond(code, axum::body::Body::from(reply.to_string()))
}

/// Serves `shared` on a free port of 127.0.0.1 from a task of the current runtime; its address.
pub async fn listen(shared: Arc<Shared>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new().fallback(answer).with_state(shared);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// A client of the server at `addr`, as the operator's (HTTP, no authentication).
pub fn client(addr: &str) -> kube::Client {
    let url: http::Uri = format!("http://{addr}").parse().expect("URL");
    kube::Client::try_from(kube::Config::new(url)).expect("client")
}
