//! The stateful fake API server (`apiserver.rs`) behind a real `kube::Client`, with the
//! operator's `Context` over it: what the tests that reconcile against stored objects share.
//! A test file that includes it also declares the modules `api`, `apiserver` and `support`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use kube::Api;
use weir_crds::StreamJob;
use weir_operator::controller::Context;
use weir_operator::kafka::KafkaClient;
use weir_operator::metrics::Metrics;

use crate::api::{mock_client, serve, Call};
use crate::apiserver::FakeApiServer;
use crate::support::{cfg, FixedKafka};

/// An API server holding `job` in namespace `shop` (as `kubectl apply` creates it) and its
/// credentials Secret `kafka-creds`.
pub fn shop_server(job: &StreamJob) -> FakeApiServer {
    let mut server = FakeApiServer::new(&[<StreamJob as kube::CustomResourceExt>::crd()]);
    server.insert(
        "/api/v1/namespaces/shop/secrets/kafka-creds",
        serde_json::json!({"data": {"sasl.password": "czNjcmV0"}}),
    );
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let j = serde_json::to_value(job).expect("job JSON");
    server.create_as_kubectl(
        &format!("/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/{name}"),
        &j,
    );
    server
}

pub struct World {
    pub server: Arc<Mutex<FakeApiServer>>,
    /// Every call the operator made, in order.
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub ctx: Arc<Context>,
    /// StreamJobs in namespace `shop`.
    pub jobs: Api<StreamJob>,
}

impl World {
    /// Serves `server` to a new client; Kafka has every topic with `partitions` partitions
    /// whose high watermarks are `high_watermark`.
    pub fn serving(server: FakeApiServer, partitions: i32, high_watermark: i64) -> World {
        let kafka = Arc::new(FixedKafka::new(partitions, high_watermark));
        World::with_kafka(server, kafka)
    }

    /// Serves `server` to a new client; the operator asks `kafka`.
    pub fn with_kafka(server: FakeApiServer, kafka: Arc<dyn KafkaClient>) -> World {
        World::over(Arc::new(Mutex::new(server)), kafka)
    }

    /// Serves `server` (shared with the test) to a new client, with `kafka` as the operator's
    /// Kafka.
    pub fn over(server: Arc<Mutex<FakeApiServer>>, kafka: Arc<dyn KafkaClient>) -> World {
        World::over_with(server, kafka, |_| {})
    }

    /// [`World::over`], with `setup` run on the context before it is shared (a test clock).
    pub fn over_with(
        server: Arc<Mutex<FakeApiServer>>,
        kafka: Arc<dyn KafkaClient>,
        setup: impl FnOnce(&mut Context),
    ) -> World {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (client, handle) = mock_client();
        let (s, c) = (server.clone(), calls.clone());
        tokio::spawn(serve(handle, move |call| {
            c.lock().expect("calls").push(call.clone());
            s.lock().expect("server").handle(call)
        }));
        let mut ctx = Context::new(client.clone(), kafka, cfg(), Metrics::default(), None);
        setup(&mut ctx);
        let ctx = Arc::new(ctx);
        World {
            server,
            calls,
            ctx,
            jobs: Api::namespaced(client, "shop"),
        }
    }
}
