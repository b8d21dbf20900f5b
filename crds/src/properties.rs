//! Which librdkafka properties a StreamJob may set, and which of them the operator uses.
//!
//! A job's `properties` and the keys of its credentials Secrets are librdkafka properties. Two
//! kinds of client read them, with different trust:
//! - the **workers** run in the job's own namespace, under the job's own ServiceAccount: a
//!   property there acts on the tenant's own pod. Still, a few properties run code or commands
//!   ([`DENIED`]) and a few would break weir's guarantees ([`RESERVED_CONSUMER`],
//!   [`RESERVED_PRODUCER`]); a job that sets one is refused (`InvalidSpec`, naming it).
//! - the **operator** serves every namespace with its own identity, files and log. Its clients
//!   (metadata, watermarks, topic creation and deletion) take only the connection and
//!   authentication properties of [`OPERATOR_ALLOWED`]; every other property applies to the
//!   workers alone. So `ssl.ca.location` or `debug` in a job never reads the operator's files or
//!   floods its log; a private CA reaches the operator as `ssl.ca.pem` (in the credentials
//!   Secret). docs/operator.md ("Trust model") says the same for users.

use std::collections::BTreeMap;

use crate::{FieldError, StreamJobSpec};

/// Properties that load code or run a command (`plugin.library.paths` and
/// `ssl.engine.location` dlopen a library, `sasl.kerberos.kinit.cmd` runs a shell command):
/// never set on any client weir makes.
pub const DENIED: &[&str] = &[
    "plugin.library.paths",
    "sasl.kerberos.kinit.cmd",
    "ssl.engine.location",
];

/// Consumer properties weir sets itself (the guarantees depend on them): offsets live in the
/// checkpoints, never in a consumer group, and the topic is never created by reading it.
pub const RESERVED_CONSUMER: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "allow.auto.create.topics",
];

/// Producer properties weir sets itself: idempotence keeps retries from duplicating or
/// reordering a partition's results, and producing never creates a topic.
pub const RESERVED_PRODUCER: &[&str] = &["enable.idempotence", "allow.auto.create.topics"];

/// The properties the operator copies onto its own clients: how to reach and authenticate to a
/// cluster, with secrets given inline (PEM), never as paths on the operator's disk.
pub const OPERATOR_ALLOWED: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.extensions",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "client.dns.lookup",
    "broker.address.family",
];

/// Why a job may not set property `name` on a client of `role` (`consumer` or `producer`), or
/// `None` when it may.
pub fn refusal(name: &str, role: Role) -> Option<String> {
    if DENIED.contains(&name) {
        return Some(format!(
            "property {name} is not allowed: it loads code or runs a command"
        ));
    }
    let reserved = match role {
        Role::Consumer => RESERVED_CONSUMER,
        Role::Producer => RESERVED_PRODUCER,
    };
    reserved.contains(&name).then(|| {
        format!(
            "property {name} is set by weir and cannot be overridden ({})",
            role.as_str()
        )
    })
}

/// The first property of `props` a job may not set, with the reason.
pub fn first_refused<'a>(
    props: impl IntoIterator<Item = &'a String>,
    role: Role,
) -> Option<(&'a str, String)> {
    props
        .into_iter()
        .find_map(|k| refusal(k, role).map(|why| (k.as_str(), why)))
}

/// The subset of `props` the operator's own clients use ([`OPERATOR_ALLOWED`]).
pub fn for_operator(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .filter(|(k, _)| OPERATOR_ALLOWED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The kinds of client the source's credentials Secret serves in the workers: the source
/// consumer, and producers writing to the source's cluster without credentials of their own
/// (a two-stage job's repartition topic; a sink or dead-letter topic with neither
/// `bootstrapServers` nor `credentials`), as `weir worker` reads it.
pub fn source_secret_roles(spec: &StreamJobSpec) -> Vec<Role> {
    let shared = |k: &crate::KafkaSink| k.bootstrap_servers.is_none() && k.credentials.is_none();
    let producers = !spec.co_partitioned()
        || shared(&spec.sink.kafka)
        || spec.dead_letter.as_ref().is_some_and(|d| shared(&d.kafka));
    let mut roles = vec![Role::Consumer];
    if producers {
        roles.push(Role::Producer);
    }
    roles
}

/// One error at `path` (the spec field naming the Secret) per key of Secret `secret` that a
/// job may not set on a client of any of `roles`, naming the Secret and the key. The workers
/// refuse such a Secret at startup; the operator, which reads the source's Secret anyway,
/// refuses the job before any worker starts with it.
pub fn refused_secret_keys<'a>(
    secret: &str,
    path: &str,
    keys: impl IntoIterator<Item = &'a String>,
    roles: &[Role],
) -> Vec<FieldError> {
    keys.into_iter()
        .filter_map(|key| {
            let why = roles.iter().find_map(|role| refusal(key, *role))?;
            Some(FieldError {
                path: path.to_string(),
                message: format!(
                    "Secret {secret} has the key {key}, which the workers would refuse ({why}): \
                     remove it from the Secret"
                ),
            })
        })
        .collect()
}

/// Which kind of client a property is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The source consumer.
    Consumer,
    /// A producer (sink, dead letters, repartition topic).
    Producer,
}

impl Role {
    /// `consumer` or `producer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::Producer => "producer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_loading_properties_are_refused_for_every_client() {
        for name in DENIED {
            for role in [Role::Consumer, Role::Producer] {
                let why = refusal(name, role).unwrap_or_default();
                assert!(why.contains(name) && why.contains("not allowed"), "{why}");
            }
        }
    }

    #[test]
    fn reserved_properties_are_refused_for_their_client_only() {
        assert!(refusal("enable.auto.commit", Role::Consumer).is_some());
        assert!(refusal("enable.auto.commit", Role::Producer).is_none());
        assert!(refusal("enable.idempotence", Role::Producer).is_some());
        assert!(refusal("enable.idempotence", Role::Consumer).is_none());
        assert!(refusal("allow.auto.create.topics", Role::Producer).is_some());
        assert!(refusal("security.protocol", Role::Consumer).is_none());
        assert!(refusal("fetch.max.bytes", Role::Consumer).is_none());
    }

    #[test]
    fn a_secret_key_is_refused_for_the_clients_the_secret_serves() {
        let keys: Vec<String> = [
            "sasl.password",
            "plugin.library.paths",
            "enable.idempotence",
        ]
        .map(String::from)
        .into();
        let path = "spec.source.kafka.credentials";
        let consumer = refused_secret_keys("kafka-creds", path, &keys, &[Role::Consumer]);
        assert_eq!(consumer.len(), 1);
        assert_eq!(consumer[0].path, path);
        let message = &consumer[0].message;
        assert!(
            message.contains("Secret kafka-creds") && message.contains("plugin.library.paths"),
            "{message}"
        );
        let both = refused_secret_keys(
            "kafka-creds",
            path,
            &keys,
            &[Role::Consumer, Role::Producer],
        );
        let refused: Vec<&str> = both
            .iter()
            .map(|e| {
                if e.message.contains("enable.idempotence") {
                    "idempotence"
                } else {
                    "plugin"
                }
            })
            .collect();
        assert_eq!(refused, ["plugin", "idempotence"]);
    }

    #[test]
    fn the_source_secret_serves_producers_that_write_to_its_cluster_without_their_own() {
        let roles = |group: &str, extra: &str| {
            let text = format!(
                "source: {{kafka: {{bootstrapServers: 'kafka:9092', topic: p, credentials: {{secretName: c}}}}}}
{group}
window: {{type: tumbling, size: 1m}}
aggregations: [{{name: n, fn: count}}]
{extra}"
            );
            source_secret_roles(&serde_norway::from_str::<StreamJobSpec>(&text).expect("spec"))
        };
        let key = "groupByKey: true";
        let both = vec![Role::Consumer, Role::Producer];
        assert_eq!(roles(key, "sink: {kafka: {topic: out}}"), both);
        let own = "sink: {kafka: {topic: out, credentials: {secretName: s}}}";
        assert_eq!(roles(key, own), [Role::Consumer]);
        let other = "sink: {kafka: {topic: out, bootstrapServers: 'other:9092'}}";
        assert_eq!(roles(key, other), [Role::Consumer]);
        let dead = format!("{other}\ndeadLetter: {{kafka: {{topic: dlq}}}}");
        assert_eq!(roles(key, &dead), both);
        // Two stages: the repartition producer uses the source's Secret.
        assert_eq!(roles("groupBy: [m]", own), both);
    }

    #[test]
    fn the_operator_keeps_only_connection_and_authentication_properties() {
        let props: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.pem", "-----BEGIN CERTIFICATE-----"),
            ("ssl.ca.location", "/etc/operator/secret.pem"),
            (
                "ssl.key.location",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            ("debug", "all"),
            ("plugin.library.paths", "/tmp/evil.so"),
            ("fetch.max.bytes", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept = for_operator(&props);
        assert_eq!(
            kept.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "sasl.mechanism",
                "sasl.password",
                "security.protocol",
                "ssl.ca.pem"
            ]
        );
    }
}
