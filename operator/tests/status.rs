//! `status::compute` and `status::needs_update`: conditions with reasons a person can act on,
//! written only when something other than a timestamp changed.

mod support;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use support::{found, job, job_with, ok, run, sts};
use weir_crds::{StreamJob, StreamJobStatus};
use weir_operator::observation::{Observation, TopicObservation};
use weir_operator::outcome::Outcome;
use weir_operator::status::{self, compute, needs_update, reason};

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("timestamp"))
}

/// Status for `job` and `obs`, after `previous`, at time `now`.
fn status_of(
    j: &StreamJob,
    obs: &Observation,
    previous: Option<&StreamJobStatus>,
    now: i64,
) -> StreamJobStatus {
    let d = run(j, obs);
    compute(j, &Outcome::from(d.as_ref()), obs, previous, &at(now))
}

fn cond<'a>(s: &'a StreamJobStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition in {s:?}"))
}

/// 12 partitions, 3 workers, StatefulSet at generation 2 with `ready` ready pods.
fn running(ready: i32) -> Observation {
    let mut obs = found(12);
    obs.stateful_set = Some(sts(2, 2, 3, 3, ready, 3));
    obs.lag = Some(42);
    obs
}

#[test]
fn a_running_job_is_ready_with_its_summary_fields() {
    let j = job();
    let s = status_of(&j, &running(3), None, 100);
    assert_eq!(cond(&s, status::READY).status, "True");
    assert_eq!(cond(&s, status::READY).reason, reason::RUNNING);
    assert_eq!(cond(&s, status::PROGRESSING).status, "False");
    assert_eq!(cond(&s, status::DEGRADED).status, "False");
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!((s.replicas, s.ready_replicas), (3, 3));
    assert_eq!(s.partitions, Some(12));
    assert_eq!(s.assignment_epoch, Some(1));
    assert_eq!(s.lag, Some(42));
    assert_eq!(s.window.as_deref(), Some("tumbling 1m +10s late"));
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/instance=payments,app.kubernetes.io/name=weir-worker")
    );
    for c in &s.conditions {
        assert_eq!(c.observed_generation, Some(1));
        assert_eq!(c.last_transition_time, at(100));
    }
}

#[test]
fn only_timestamps_changing_needs_no_update_and_keeps_transition_times() {
    let j = job();
    let mut obs = running(3);
    obs.last_checkpoint_time = Some(at(50));
    let first = status_of(&j, &obs, None, 100);
    obs.last_checkpoint_time = Some(at(60));
    let second = status_of(&j, &obs, Some(&first), 200);
    assert_eq!(second.last_checkpoint_time, Some(at(60)));
    for c in &second.conditions {
        assert_eq!(c.last_transition_time, at(100), "{}", c.type_);
    }
    assert!(!needs_update(&first, &second));

    // Even a status computed without the old one (new transition times) needs no patch.
    let fresh = status_of(&j, &obs, None, 300);
    assert!(!needs_update(&first, &fresh));
}

#[test]
fn a_condition_flip_needs_an_update_with_a_new_transition_time() {
    let j = job();
    let first = status_of(&j, &running(3), None, 100);
    let second = status_of(&j, &running(2), Some(&first), 200);
    let ready = cond(&second, status::READY);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, reason::WORKERS_NOT_READY);
    assert_eq!(ready.message, "2 of 3 workers ready");
    assert_eq!(ready.last_transition_time, at(200));
    // Degraded flipped too (rollout done, a worker still not ready); Progressing did not.
    assert_eq!(
        cond(&second, status::DEGRADED).reason,
        reason::WORKERS_NOT_READY
    );
    assert_eq!(
        cond(&second, status::DEGRADED).last_transition_time,
        at(200)
    );
    assert_eq!(
        cond(&second, status::PROGRESSING).last_transition_time,
        at(100)
    );
    assert!(needs_update(&first, &second));
}

#[test]
fn a_lag_change_needs_an_update() {
    let j = job();
    let first = status_of(&j, &running(3), None, 100);
    let mut obs = running(3);
    obs.lag = Some(7);
    assert!(needs_update(
        &first,
        &status_of(&j, &obs, Some(&first), 200)
    ));
}

/// A change of a known lag alone is written at the requeue cadence, not on every reconcile; a
/// lag that becomes unknown, or any other change with it, is a change that matters.
#[test]
fn a_lag_change_alone_is_only_a_lag_change() {
    let j = job();
    let first = status_of(&j, &running(3), None, 100);
    let mut obs = running(3);
    obs.lag = Some(7);
    let lag_moved = status_of(&j, &obs, Some(&first), 200);
    assert!(status::only_counts_changed(&first, &lag_moved));
    obs.lag = None;
    let lag_unknown = status_of(&j, &obs, Some(&first), 200);
    assert!(!status::only_counts_changed(&first, &lag_unknown));
    let mut obs = running(2);
    obs.lag = Some(7);
    let worker_lost = status_of(&j, &obs, Some(&first), 200);
    assert!(!status::only_counts_changed(&first, &worker_lost));
    assert!(
        !status::only_counts_changed(&first, &first),
        "nothing changed"
    );
}

#[test]
fn a_rollout_is_done_when_progressing_turns_false_up_to_date() {
    let j = job();
    let mut obs = found(12);
    obs.stateful_set = Some(sts(3, 2, 3, 3, 3, 3));
    let rolling = status_of(&j, &obs, None, 100);
    let done = status_of(&j, &running(3), Some(&rolling), 200);
    assert!(status::rolled_out(Some(&rolling), &done));
    assert!(!status::rolled_out(Some(&done), &done), "already done");
    assert!(
        !status::rolled_out(None, &done),
        "a first status announces nothing"
    );
    let blocked = status_of(
        &j,
        &Observation::new(TopicObservation::NotFound),
        Some(&rolling),
        200,
    );
    assert!(!status::rolled_out(Some(&rolling), &blocked));
}

/// A failed reconcile names its step in `Degraded` and `Progressing`; `Ready` stays True for a
/// running job and is False with the step for one that never ran; the rest is kept.
#[test]
fn a_failed_reconcile_names_its_step() {
    let j = job();
    let message = "applying Role payments-worker: forbidden (Forbidden, HTTP 403). Check";
    let new = status::failed(&j, None, "ApplyRole", message, &at(100));
    assert_eq!(cond(&new, status::READY).status, "False");
    assert_eq!(cond(&new, status::READY).reason, "ApplyRole");
    assert_eq!(cond(&new, status::READY).message, message);
    assert_eq!(cond(&new, status::DEGRADED).status, "True");
    assert_eq!(cond(&new, status::PROGRESSING).reason, "ApplyRole");
    assert_eq!(new.observed_generation, Some(1));
    assert_eq!(new.window.as_deref(), Some("tumbling 1m +10s late"));

    let ready = status_of(&j, &running(3), None, 100);
    let failed = status::failed(&j, Some(&ready), "ApplyStatefulSet", message, &at(200));
    assert_eq!(cond(&failed, status::READY), cond(&ready, status::READY));
    assert_eq!(cond(&failed, status::DEGRADED).reason, "ApplyStatefulSet");
    assert_eq!(
        cond(&failed, status::DEGRADED).last_transition_time,
        at(200)
    );
    assert_eq!(
        (failed.lag, failed.partitions),
        (ready.lag, ready.partitions)
    );
    // The same failure again changes nothing worth a write.
    let again = status::failed(&j, Some(&failed), "ApplyStatefulSet", message, &at(300));
    assert!(!needs_update(&failed, &again));
}

#[test]
fn a_rollout_in_progress_is_progressing() {
    let j = job();
    let mut obs = found(12);
    // The StatefulSet controller has not seen the new template yet.
    obs.stateful_set = Some(sts(3, 2, 3, 3, 3, 3));
    let s = status_of(&j, &obs, None, 100);
    assert_eq!(cond(&s, status::PROGRESSING).status, "True");
    assert_eq!(cond(&s, status::PROGRESSING).reason, reason::ROLLING_OUT);
    assert_eq!(cond(&s, status::READY).reason, reason::WORKERS_NOT_READY);
    assert_eq!(cond(&s, status::DEGRADED).status, "False");

    // Not created yet.
    let s = status_of(&j, &found(12), None, 100);
    assert_eq!(cond(&s, status::PROGRESSING).status, "True");
    assert_eq!(cond(&s, status::READY).status, "False");
    assert_eq!(s.replicas, 0);
}

#[test]
fn an_invalid_spec_names_the_field() {
    let j = job_with("window: {type: hopping, size: 1m}");
    let obs = running(3);
    let d = run(&j, &obs);
    assert!(d.is_err());
    let s = compute(&j, &Outcome::from(d.as_ref()), &obs, None, &at(1));
    let ready = cond(&s, status::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::INVALID_SPEC)
    );
    assert!(
        ready.message.contains("spec.window.slide"),
        "{}",
        ready.message
    );
    assert_eq!(cond(&s, status::DEGRADED).status, "True");
    assert_eq!(cond(&s, status::PROGRESSING).status, "False");
    // The running workers are still reported.
    assert_eq!(s.replicas, 3);
}

#[test]
fn topic_and_broker_problems_have_their_reasons() {
    let j = job();
    let mut obs = Observation::new(TopicObservation::NotFound);
    let s = status_of(&j, &obs, None, 1);
    let ready = cond(&s, status::READY);
    assert_eq!(ready.reason, reason::TOPIC_NOT_FOUND);
    assert!(ready.message.contains("payments") && ready.message.contains("kafka:9092"));
    assert_eq!(cond(&s, status::DEGRADED).reason, reason::TOPIC_NOT_FOUND);
    assert_eq!(s.assignment_epoch, None);

    obs.topic = TopicObservation::BrokerUnreachable {
        detail: "connection refused".to_string(),
    };
    // The last published assignment is still reported.
    obs.previous_assignment = ok(&j, &found(4)).workers.map(|w| w.assignment);
    let s = status_of(&j, &obs, None, 1);
    let ready = cond(&s, status::READY);
    assert_eq!(ready.reason, reason::BROKER_UNREACHABLE);
    assert!(ready.message.contains("payments") && ready.message.contains("kafka:9092"));
    assert_eq!(s.partitions, Some(4));
    assert_eq!(s.assignment_epoch, Some(1));

    // A missing credentials Secret is named: it is the job owner's own object.
    obs.topic = TopicObservation::CredentialsMissing {
        message: "the credentials Secret kafka-creds (spec.source.kafka.credentials) does not \
                  exist in namespace shop"
            .to_string(),
    };
    let s = status_of(&j, &obs, None, 1);
    let ready = cond(&s, status::READY);
    assert_eq!(ready.reason, reason::BROKER_UNREACHABLE);
    assert!(
        ready.message.contains("Secret kafka-creds"),
        "{}",
        ready.message
    );
}

/// What librdkafka says when the brokers cannot be asked, by the kind of failure: each tells
/// something of the address (a port closed, filtered, a name unknown, a TLS server there).
const UNREACHABLE_DETAILS: [&str; 6] = [
    "Meta data fetch error: BrokerTransportFailure (Local: Broker transport failure): \
     Connect to ipv4#10.0.0.7:22 failed: Connection refused",
    "Meta data fetch error: OperationTimedOut (Local: Timed out)",
    "Meta data fetch error: Resolve (Local: Host resolution failure): \
     Failed to resolve 'nowhere.invalid:9092': Name or service not known",
    "Meta data fetch error: SSL (Local: SSL error): SSL handshake failed: \
     error:0A00010B:SSL routines::wrong version number",
    "Meta data fetch error: Authentication (Local: Authentication failure): \
     SASL authentication error: Authentication failed",
    "metadata of topic payments: TopicAuthorizationFailed (Broker: Topic authorization failed)",
];

#[test]
fn broker_unreachable_says_the_same_whatever_failed() {
    let j = job();
    let statuses: Vec<StreamJobStatus> = UNREACHABLE_DETAILS
        .iter()
        .map(|detail| {
            let obs = Observation::new(TopicObservation::BrokerUnreachable {
                detail: detail.to_string(),
            });
            status_of(&j, &obs, None, 1)
        })
        .collect();
    for (s, detail) in statuses.iter().zip(UNREACHABLE_DETAILS) {
        // Byte-identical: every condition, reason and message.
        assert_eq!(
            serde_json::to_string(s).expect("status"),
            serde_json::to_string(&statuses[0]).expect("status"),
            "{detail}"
        );
        for c in &s.conditions {
            for leak in [
                "Connection refused",
                "Timed out",
                "resolve",
                "SSL",
                "10.0.0.7",
                "SASL",
            ] {
                assert!(!c.message.contains(leak), "{leak} in {}", c.message);
            }
        }
    }
    let ready = cond(&statuses[0], status::READY);
    assert_eq!(ready.reason, reason::BROKER_UNREACHABLE);
    // What it may say: the brokers configured, what to check, where the detail is.
    for said in [
        "kafka:9092",
        "bootstrapServers",
        "network polic",
        "credentials",
        "log",
    ] {
        assert!(
            ready.message.contains(said),
            "{said} not in {}",
            ready.message
        );
    }
}

#[test]
fn retention_shorter_than_window_plus_lateness_is_degraded_not_unready() {
    let j = job_with("window: {type: tumbling, size: 24h, allowedLateness: 1h}");
    let mut obs = running(3);
    obs.topic = TopicObservation::Found {
        partitions: 12,
        retention_ms: Some(24 * 3_600_000),
    };
    let s = status_of(&j, &obs, None, 1);
    let degraded = cond(&s, status::DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, reason::RETENTION_SHORTER_THAN_WINDOW);
    assert!(degraded.message.contains("1d1h"), "{}", degraded.message);
    assert_eq!(cond(&s, status::READY).status, "True");

    // Enough retention, or infinite: healthy.
    for retention in [Some(25 * 3_600_000), None] {
        obs.topic = TopicObservation::Found {
            partitions: 12,
            retention_ms: retention,
        };
        let s = status_of(&j, &obs, None, 1);
        assert_eq!(cond(&s, status::DEGRADED).status, "False", "{retention:?}");
    }
}

#[test]
fn window_summaries() {
    let w = |extra: &str| status::window_summary(&job_with(extra).spec.window);
    assert_eq!(w("window: {type: tumbling, size: 1m}"), "tumbling 1m");
    assert_eq!(
        w("window: {type: hopping, size: 1m, slide: 10s}"),
        "hopping 1m every 10s"
    );
    assert_eq!(w("window: {type: session, gap: 5m}"), "session gap 5m");
}

#[test]
fn names_held_by_objects_the_job_does_not_own_block_it_and_are_named() {
    use weir_operator::observation::NameConflict;
    use weir_operator::outcome::Applied;
    let j = job();
    let obs = found(12);
    let desired = ok(&j, &obs);
    let applied = Applied {
        name_conflicts: vec![
            NameConflict {
                kind: "StatefulSet",
                name: "payments-worker".to_string(),
                controller: Some("Deployment/billing".to_string()),
            },
            NameConflict {
                kind: "ServiceAccount",
                name: "payments-worker".to_string(),
                controller: None,
            },
        ],
        ..Applied::default()
    };
    let outcome = Outcome::Built {
        desired: &desired,
        applied,
    };
    let s = compute(&j, &outcome, &obs, None, &at(100));
    for (t, status) in [
        (status::READY, "False"),
        (status::PROGRESSING, "False"),
        (status::DEGRADED, "True"),
    ] {
        assert_eq!(cond(&s, t).status, status, "{t}");
        assert_eq!(cond(&s, t).reason, reason::NAME_CONFLICT, "{t}");
    }
    let message = &cond(&s, status::READY).message;
    assert_eq!(
        message,
        "StatefulSet payments-worker (controlled by Deployment/billing), ServiceAccount \
         payments-worker (no controller owner reference) exist and are not this StreamJob's \
         (no owner reference to it as controller): the operator creates and changes nothing for \
         the job until then. Delete or rename them, or give the StreamJob another name; to hand \
         them over to the job, add an owner reference to StreamJob payments (uid \
         0b5e3c1e-1111-2222-3333-444455556666) with controller: true"
    );
}

/// `obs` with every one of its 12 partitions' checkpoints holding `definition`, `results_from`
/// and `reset`.
fn marked(
    mut obs: Observation,
    definition: Option<&str>,
    results_from: Option<i64>,
    reset: Option<&str>,
) -> Observation {
    obs.checkpoint_marks = (0..12)
        .map(|p| {
            let m = weir_operator::observation::CheckpointMarks {
                definition: definition.map(str::to_string),
                results_from_ms: results_from,
                reset: reset.map(str::to_string),
                // Written at the epoch of the assignment built (1: no handoff under way).
                epoch: 1,
            };
            (p, m)
        })
        .collect();
    obs
}

fn event_reasons(old: Option<&StreamJobStatus>, new: &StreamJobStatus) -> Vec<&'static str> {
    status::lifecycle_events(old, new)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn an_operator_upgrade_over_checkpoints_without_fingerprints_announces_nothing() {
    let j = job();
    // The status a previous version wrote: no definition, no reset.
    let mut old = status_of(&j, &running(3), None, 100);
    old.definition = None;
    let new = status_of(&j, &marked(running(3), None, None, None), Some(&old), 200);
    let d = new.definition.as_ref().expect("status.definition");
    assert_eq!(d.previous_partitions, 0);
    assert_eq!(cond(&new, status::PROGRESSING).reason, reason::UP_TO_DATE);
    assert_eq!(event_reasons(Some(&old), &new), Vec::<&str>::new());
}

#[test]
fn an_edit_taken_up_between_two_reconciles_is_still_announced_as_applied() {
    let before = job();
    let old = status_of(&before, &running(3), None, 100);
    let edited = job_with("window: {type: tumbling, size: 2m}");
    let fp = weir_crds::definition::fingerprint(&edited.spec);
    let obs = marked(running(3), Some(&fp), Some(1_796_198_520_000), None);
    let new = status_of(&edited, &obs, Some(&old), 200);
    assert_eq!(event_reasons(Some(&old), &new), ["DefinitionApplied"]);
    let d = new.definition.as_ref().expect("status.definition");
    assert_eq!(
        d.results_from,
        Some(Time(
            Timestamp::from_millisecond(1_796_198_520_000).expect("t")
        ))
    );
    // And a status written again says nothing more.
    let again = status_of(&edited, &obs, Some(&new), 300);
    assert_eq!(event_reasons(Some(&new), &again), Vec::<&str>::new());
}

#[test]
fn suspended_jobs_are_not_ready_and_stop_progressing_once_no_pod_is_left() {
    let j = job_with("suspend: true");
    let mut obs = running(3);
    obs.worker_pods = Some(2);
    let s = status_of(&j, &obs, None, 100);
    assert_eq!(cond(&s, status::READY).reason, reason::SUSPENDED);
    assert_eq!(cond(&s, status::READY).status, "False");
    assert_eq!(cond(&s, status::PROGRESSING).reason, reason::SUSPENDING);
    assert_eq!(cond(&s, status::SUSPENDED).status, "True");
    assert_eq!(
        cond(&s, status::DEGRADED).status,
        "False",
        "suspended is not degraded"
    );
    obs.worker_pods = Some(0);
    let later = status_of(&j, &obs, Some(&s), 200);
    assert_eq!(cond(&later, status::PROGRESSING).status, "False");
    assert_eq!(cond(&later, status::PROGRESSING).reason, reason::SUSPENDED);
    assert_eq!(event_reasons(None, &s), ["Suspended"]);
    assert_eq!(event_reasons(Some(&s), &later), Vec::<&str>::new());
    // Resumed: the condition stays, False.
    let resumed = status_of(&job(), &running(3), Some(&later), 300);
    assert_eq!(cond(&resumed, status::SUSPENDED).status, "False");
    assert_eq!(cond(&resumed, status::SUSPENDED).reason, reason::RESUMED);
    assert_eq!(event_reasons(Some(&later), &resumed), ["Resumed"]);
    // A job never suspended has no Suspended condition.
    let plain = status_of(&job(), &running(3), None, 100);
    assert!(plain
        .conditions
        .iter()
        .all(|c| c.type_ != status::SUSPENDED));
}

#[test]
fn a_reset_already_applied_when_first_seen_is_announced_applied_only() {
    let j = job_with("reset: {to: earliest, id: again}");
    let obs = marked(running(3), None, None, Some("earliest#again"));
    let s = status_of(&j, &obs, None, 100);
    let r = s.reset.as_ref().expect("status.reset");
    assert_eq!((r.applied_partitions, r.partitions), (12, 12));
    assert_eq!(r.time, Some(at(100)));
    assert_eq!(event_reasons(None, &s), ["ResetApplied"]);
    // Another id: requested again, and its time is not the previous reset's.
    let j2 = job_with("reset: {to: earliest, id: third}");
    let s2 = status_of(&j2, &obs, Some(&s), 200);
    let r2 = s2.reset.as_ref().expect("status.reset");
    assert_eq!((r2.applied_partitions, r2.time.clone()), (0, None));
    assert_eq!(cond(&s2, status::PROGRESSING).reason, reason::RESETTING);
    assert_eq!(event_reasons(Some(&s), &s2), ["ResetRequested"]);
}

#[test]
fn a_failed_reconcile_of_a_suspended_job_keeps_it_suspended_without_a_second_event() {
    let j = job_with("suspend: true");
    let mut obs = running(3);
    obs.worker_pods = Some(0);
    let suspended = status_of(&j, &obs, None, 100);
    let failed = status::failed(&j, Some(&suspended), "ApplyRole", "refused", &at(200));
    assert_eq!(cond(&failed, status::SUSPENDED).status, "True");
    let next = status_of(&j, &obs, Some(&failed), 300);
    assert_eq!(event_reasons(Some(&failed), &next), Vec::<&str>::new());
}

/// A running job whose checkpoints report refusals by the bound on open state: source
/// partition 3 (`refused` records) and merge partition 1 (9 partials), last at `last_secs`.
fn refusing(refused: u64, last_secs: i64) -> Observation {
    use weir_crds::checkpoint::StateFull;
    use weir_operator::observation::StateFullReport;
    let mut obs = running(3);
    let at = |refused| StateFull {
        refused,
        last_refused_at_ms: last_secs * 1000,
    };
    obs.state_full = vec![
        StateFullReport {
            merge: false,
            partition: 3,
            state_full: at(refused),
        },
        StateFullReport {
            merge: true,
            partition: 1,
            state_full: at(9),
        },
    ];
    obs
}

#[test]
fn partitions_refusing_records_for_room_make_the_job_degraded_while_recent() {
    let j = job();
    let healthy = status_of(&j, &running(3), None, 1_000);
    let s = status_of(&j, &refusing(1234, 990), Some(&healthy), 1_000);
    let degraded = cond(&s, status::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reason::STATE_FULL)
    );
    for part in [
        "source partition 3 (1234 records refused)",
        "merge partition 1 (9 partials refused)",
        "spec.worker.resources.limits.memory",
        "--max-open-rows",
    ] {
        assert!(
            degraded.message.contains(part),
            "{part:?}: {}",
            degraded.message
        );
    }
    // Results still flow: Ready and Progressing say what they said.
    assert_eq!(cond(&s, status::READY).status, "True");
    assert_eq!(cond(&s, status::PROGRESSING).status, "False");
    assert!(needs_update(&healthy, &s));
    // More refused since: only counts changed (written at the lag's cadence).
    let more = status_of(&j, &refusing(2000, 1_010), Some(&s), 1_020);
    assert!(needs_update(&s, &more));
    assert!(status::only_counts_changed(&s, &more));
    // No refusal for 5 minutes: back to Healthy, which is a change that matters.
    let calm = status_of(&j, &refusing(2000, 1_010), Some(&more), 1_010 + 301);
    assert_eq!(cond(&calm, status::DEGRADED).reason, reason::HEALTHY);
    assert!(!status::only_counts_changed(&more, &calm));
    // Within the 5 minutes, still degraded; a refusal long ago is none.
    let within = status_of(&j, &refusing(2000, 1_010), Some(&more), 1_010 + 300);
    assert_eq!(cond(&within, status::DEGRADED).reason, reason::STATE_FULL);
    let none = status_of(&j, &running(3), None, 1_000);
    assert_eq!(cond(&none, status::DEGRADED).reason, reason::HEALTHY);
}
