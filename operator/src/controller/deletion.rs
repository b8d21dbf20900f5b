//! Deleting a job with `deleteOnJobDeletion`: stop its workers, then delete its checkpoints and
//! (when something of the job's claims it) its repartition topic.

use super::*;

/// First step of the cleanup of a deleted job with `deleteOnJobDeletion`: stops its workers.
/// Deletes the job's StatefulSet (only the one it owns, by uid precondition; background
/// propagation, so the garbage collector then deletes its pods, each with its grace period) and
/// returns whether no worker pod is left. While some are, the status (`Ready=False`,
/// [`STOPPING_WORKERS`]) names them, and a Normal Event says so once.
pub(super) async fn stop_workers(job: &StreamJob, ctx: &Context) -> Result<bool, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let set_name = names::worker_name(&name);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let set = sets
        .get_opt(&set_name)
        .await
        .map_err(|source| Error::ReadStatefulSet {
            name: set_name.clone(),
            source,
        })?;
    let owned = |s: &StatefulSet| {
        s.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == job.metadata.uid.as_ref())
    };
    if let Some(set) = set.filter(|s| s.metadata.deletion_timestamp.is_none() && owned(s)) {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: set.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match sets.delete(&set_name, &params).await {
            Ok(_) => info!(statefulset = %set_name, "deleted the workers"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::DeleteStatefulSet {
                    name: set_name,
                    source,
                })
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = names::selector_string(&name);
    let left = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListWorkerPods {
            job: name.clone(),
            source,
        })?;
    if left.items.is_empty() {
        return Ok(true);
    }
    let mut pod_names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
    pod_names.sort_unstable();
    let topic = if job.spec.co_partitioned() {
        ""
    } else {
        " and the repartition topic"
    };
    let message = format!(
        "deleting: waiting for {} worker pod(s) to stop ({}) before deleting the checkpoints{topic}",
        pod_names.len(),
        pod_names.join(", "),
    );
    info!(pods = pod_names.len(), "waiting for the workers to stop");
    let was_waiting = job.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == status::READY && c.reason == STOPPING_WORKERS)
    });
    patch_status(job, &stopping_status(job, &message), ctx).await?;
    if !was_waiting {
        publish_as(
            ctx,
            &job.metadata,
            EventType::Normal,
            STOPPING_WORKERS,
            &message,
        )
        .await;
    }
    Ok(false)
}

/// The job's status with `Ready=False` [`STOPPING_WORKERS`] and `message`; the rest as it was.
fn stopping_status(job: &StreamJob, message: &str) -> StreamJobStatus {
    let mut s = job.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let ready = Condition {
        type_: status::READY.to_string(),
        status: "False".to_string(),
        reason: STOPPING_WORKERS.to_string(),
        message: message.to_string(),
        observed_generation: job.metadata.generation,
        last_transition_time: now,
    };
    match s.conditions.iter_mut().find(|c| c.type_ == status::READY) {
        Some(c) if c.status == "False" => {
            let since = c.last_transition_time.clone();
            *c = Condition {
                last_transition_time: since,
                ..ready
            };
        }
        Some(c) => *c = ready,
        None => s.conditions.push(ready),
    }
    s
}

/// Cleanup of a deleted job with `deleteOnJobDeletion`, once [`stop_workers`] found no worker
/// left: deletes its checkpoints — the ConfigMaps (by the job label), or the records in object
/// storage — and, for a two-stage job, then its repartition topic, but only when something of
/// the job's claims it (its job ConfigMap's assignment or its merge-stage checkpoints, read
/// before the checkpoints go; see `weir_crds::topics`). A topic of that name that nothing
/// claims is another's: it stays, and a Warning Event ([`reason::NAME_CONFLICT`]) says so.
/// Idempotent: deleting nothing succeeds.
/// A failure is retried with backoff and the job's deletion waits for it; for the object store
/// and the topic, a Warning Event says why (a missing Secret, refused credentials or ACLs).
pub(super) async fn cleanup(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    if job.spec.co_partitioned() {
        cleanup_checkpoints(job, ctx, &ns, &name).await?;
        return Ok(Action::await_change());
    }
    let connection = match children::connection(&ctx.client, job).await? {
        Resolved::Ready(conn) => Ok(conn),
        Resolved::MissingSecret { message } => Err(message),
    };
    let (topic, state) = repartition_of_deleted(
        &ctx.client,
        ctx.kafka.as_ref(),
        connection.as_ref().ok(),
        job,
        &ctx.config,
    )
    .await?;
    cleanup_checkpoints(job, ctx, &ns, &name).await?;
    if !topic.is_claimed() {
        if matches!(state, Some(TopicObservation::Found { .. })) {
            let note = format!(
                "the repartition topic {} was not deleted: nothing of this job's (its ConfigMap, \
                 its merge-stage checkpoints) names it, so it is not known to be this job's. \
                 Delete it yourself if it is unused",
                topic.name
            );
            warn!(topic = %topic.name, "repartition topic not claimed by the job: left in place");
            publish(ctx, &job.metadata, reason::NAME_CONFLICT, &note).await;
        }
        return Ok(Action::await_change());
    }
    let topic = topic.name;
    let deleted = match &connection {
        Ok(conn) => ctx
            .kafka
            .delete_topic(conn, &topic)
            .await
            .map_err(|failure| {
                // The status and the Event show only what the brokers answered.
                warn!(%topic, bootstrap_servers = %conn.bootstrap_servers,
                error = %failure.detail(), "cannot delete the repartition topic");
                failure.to_string()
            }),
        Err(message) => Err(message.clone()),
    };
    if let Err(message) = deleted {
        let note = format!(
            "cannot delete the repartition topic {topic}: {message}; the StreamJob is \
             deleted once it is (or remove its finalizer {FINALIZER})"
        );
        publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, &note).await;
        return Err(Error::DeleteRepartitionTopic { topic, message });
    }
    info!(%topic, "deleted the repartition topic");
    Ok(Action::await_change())
}

async fn cleanup_checkpoints(
    job: &StreamJob,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    if job.spec.checkpoint.store.config_map.is_some() {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        let failed = |source| Error::DeleteCheckpoints {
            job: name.to_string(),
            source,
        };
        let selector = names::checkpoint_selector(name);
        let listed = ListParams::default().labels(&selector);
        // The job's repartition topic by either name (before and since `weir_crds::topics`).
        let repartition = weir_crds::topics::repartition_topic_names(Some(ns), name);
        let repartition = repartition.each_ref().map(String::as_str);
        let config_maps = api.list(&listed).await.map_err(failed)?.items;
        // A legacy merge name holding another topic's record is the stage-1 checkpoint of the
        // job `<job>-merge` (the names were equal): give it that job's label, so that the
        // delete below, by this job's label, leaves it.
        let owner = names::job_label_value(&format!("{name}-merge"));
        let labels = std::collections::BTreeMap::from([(names::LABEL_JOB, owner.as_str())]);
        let relabel = serde_json::json!({"metadata": {"labels": labels}});
        let patch = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        for cm in &config_maps {
            let Some(cm_name) = cm.metadata.name.as_deref() else {
                continue;
            };
            if another_jobs_checkpoint(cm, name, &repartition) {
                api.patch(cm_name, &patch, &Patch::Merge(&relabel))
                    .await
                    .map_err(failed)?;
                info!(configmap = cm_name, job = %owner,
                    "left a checkpoint ConfigMap holding another job's record");
            }
        }
        api.delete_collection(&DeleteParams::default(), &listed)
            .await
            .map_err(failed)?;
    } else if let Some(store) = &job.spec.checkpoint.store.object_store {
        if !ctx.config.may_reach(store) {
            // The job was refused (InvalidSpec): no worker ran, and the operator must not delete
            // with its own identity what the URL names. Say so; do not hold the deletion.
            let note = "object-store checkpoints not deleted: the job names no credentials \
                        Secret and this operator does not use its own identity \
                        (--object-store-operator-identity)";
            publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, note).await;
            return Ok(());
        }
        if let Err(e) = crate::object_checkpoints::cleanup(&ctx.client, job, store).await {
            let note = format!(
                "{e}; the StreamJob is deleted once they are (or remove its finalizer {FINALIZER})"
            );
            publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, &note).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Whether a ConfigMap the job's checkpoint label selects holds another job's record, which
/// cleanup must leave (relabelled for that job): one of the merge stage's names before this version
/// (`<job>-merge-checkpoint-<p>`, equal to the stage-1 names of the job `<job>-merge`) holding
/// a record of a topic other than the job's repartition topic, by either of its names
/// (docs/checkpoints.md, "Migration").
pub(super) fn another_jobs_checkpoint(cm: &ConfigMap, job: &str, repartition: &[&str]) -> bool {
    let prefix = format!("{}-", names::legacy_merge_checkpoint_prefix(job));
    let legacy = cm
        .metadata
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix(&prefix))
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    legacy
        && crate::observe::checkpoints::parse_config_maps(std::slice::from_ref(cm))
            .iter()
            .any(|cp| !repartition.contains(&cp.topic.as_str()))
}
