//! The reconcilers: StreamQuery and MarketProducer into owned objects by
//! server-side apply, then status from the Deployment and the worker.
//!
//! A StreamQuery with `spec.parallelism` is a set of worker Deployments
//! ([`reconcile_parallel`]): a new number of workers first scales every live
//! worker to zero and waits until no pod of the old set exists, and only
//! then applies the new set ([`rescale`] decides; this module does the I/O).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{
    Action, Config as ControllerConfig, Controller, Error as ControllerError,
};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tickflow_crds::WorkerStatus;
use tickflow_crds::{
    MarketProducer, MarketProducerStatus, Phase, RunState, StreamQuery, StreamQueryStatus,
    condition,
};

use crate::desired::{self, Defaults};
use crate::metrics::Metrics;
use crate::rescale::{self, Plan};
use crate::sql_check;
use crate::status::{self, Health, Rollout, VolumeReport};
use crate::worker_status;

/// Field manager of everything the operator writes.
pub const MANAGER: &str = "tickflow-operator";
/// Field manager of the checkpoint PVC's owner reference, changed apart
/// from the PVC's spec (see [`desired::pvc_ownership_patch`]).
pub const OWNERSHIP_MANAGER: &str = "tickflow-operator-ownership";
/// Field manager of a rescale's scale-down (a merge patch of spec.replicas,
/// not an apply: an apply of only that field would drop the rest of the
/// spec the operator's apply owns). The next apply takes the field back.
pub const RESCALE_MANAGER: &str = "tickflow-operator-rescale";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Fingerprint of the objects last applied per resource, and when: an
    /// unchanged resource is not re-applied on every Deployment status change.
    applied: Mutex<HashMap<String, (String, Instant)>>,
    /// How often running workloads are re-read for the worker's figures.
    pub refresh: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        defaults: Defaults,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        refresh: Duration,
    ) -> Self {
        Self {
            client,
            defaults,
            recorder,
            metrics,
            failures: Mutex::default(),
            applied: Mutex::default(),
            refresh,
        }
    }

    /// Drops what is remembered about a deleted object.
    pub fn forget(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
        self.applied.lock().unwrap().remove(key);
        self.count_remembered();
    }

    /// Whether this process applied objects with fingerprint `print` for
    /// `key` within [`REAPPLY_EVERY`].
    fn applied_recently(&self, key: &str, print: &str) -> bool {
        self.applied
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|(f, at)| f == print && at.elapsed() < REAPPLY_EVERY)
    }

    /// Entries remembered per object: (applied, failures).
    pub fn remembered(&self) -> (usize, usize) {
        (
            self.applied.lock().unwrap().len(),
            self.failures.lock().unwrap().len(),
        )
    }

    fn count_remembered(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (applied, failures) = self.remembered();
        self.metrics
            .remembered_applies
            .store(applied as u64, Relaxed);
        self.metrics
            .remembered_failures
            .store(failures as u64, Relaxed);
    }
}

/// Exponential backoff after failures: 2 s, 4 s, … up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.clamp(1, 9))).min(Duration::from_secs(300))
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    key_of(
        &K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default(),
    )
}

fn key_of(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let n = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key(obj.as_ref())).or_default();
        *n += 1;
        *n
    };
    ctx.count_remembered();
    let wait = backoff(n);
    tracing::warn!(
        object = %key(obj.as_ref()),
        failures = n,
        retry_in_s = wait.as_secs(),
        "reconcile failed: {err}"
    );
    Action::requeue(wait)
}

/// Server-side apply as the operator's field manager (force: the operator
/// owns these objects' spec).
async fn apply<K>(api: &Api<K>, obj: &K, metrics: &Metrics) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let r = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await;
    metrics
        .applies
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    r
}

/// Full re-apply at least this often, to undo drift in owned objects (a
/// deleted ConfigMap or Service comes back within this long).
const REAPPLY_EVERY: Duration = Duration::from_secs(60);

fn fingerprint(objects: &[serde_json::Value]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(serde_json::to_vec(objects).expect("serializable"));
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What `apply_all` did: the live Deployment, what else it has to report,
/// and whether it is settled (remembered, so not repeated for a while).
struct Applied<T> {
    deployment: Deployment,
    report: T,
    settled: bool,
}

/// The workload's live Deployment, after making sure its owned objects are
/// applied: `apply_all` runs (and is remembered when settled) unless this
/// process applied the same `objects` recently and the live Deployment still
/// matches; its report is None when it did not run.
async fn ensure_applied<T, F, Fut>(
    ctx: &Context,
    key: String,
    objects: &[serde_json::Value],
    deployments: &Api<Deployment>,
    desired: &Deployment,
    apply_all: F,
) -> Result<(Deployment, Option<T>), Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Applied<T>, Error>>,
{
    let print = fingerprint(objects);
    let recent = ctx.applied_recently(&key, &print);
    if recent && let Some(live) = unchanged_deployment(deployments, desired).await? {
        return Ok((live, None));
    }
    let applied = apply_all().await?;
    if applied.settled {
        ctx.applied
            .lock()
            .unwrap()
            .insert(key, (print, Instant::now()));
    } else {
        ctx.applied.lock().unwrap().remove(&key);
    }
    ctx.count_remembered();
    Ok((applied.deployment, Some(applied.report)))
}

/// The Ready condition's message (for events).
fn ready_message(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The live Deployment when it still matches `desired` (same template hash
/// and replicas), so the applies can be skipped.
async fn unchanged_deployment(
    api: &Api<Deployment>,
    desired: &Deployment,
) -> Result<Option<Deployment>, kube::Error> {
    let Some(live) = api.get_opt(&desired.name_any()).await? else {
        return Ok(None);
    };
    Ok(same_deployment(&live, desired).then_some(live))
}

/// Whether `live` runs what `want` asks for: same template hash, same replicas.
fn same_deployment(live: &Deployment, want: &Deployment) -> bool {
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(desired::SPEC_HASH_ANNOTATION).cloned())
    };
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    hash(live) == hash(want) && replicas(live) == replicas(want)
}

/// Applies `status` to the status subresource when it differs from `previous`.
async fn write_status<K, S>(
    api: &Api<K>,
    obj: &K,
    status: &S,
    previous: Option<&S>,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if previous == Some(status) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    metrics
        .status_writes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// An event on the resource; failures to record are logged, not fatal.
async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(status::truncate_bytes(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!("recording event {reason}: {e}");
    }
}

/// Statuses that carry the time of the last worker report.
trait ReportTime {
    fn report_time(&mut self) -> &mut Option<String>;
}

impl ReportTime for StreamQueryStatus {
    fn report_time(&mut self) -> &mut Option<String> {
        &mut self.worker_reported_at
    }
}

impl ReportTime for MarketProducerStatus {
    fn report_time(&mut self) -> &mut Option<String> {
        &mut self.worker_reported_at
    }
}

/// Keeps the previous report time when nothing else in the status changed:
/// re-reading unchanged figures is not worth a status write (and every
/// write wakes the reconciler).
fn keep_report_time_if_unchanged<S: ReportTime + Clone + PartialEq>(
    status: &mut S,
    previous: Option<&S>,
) {
    let Some(prev) = previous else { return };
    let mut candidate = status.clone();
    *candidate.report_time() = prev.clone().report_time().clone();
    if &candidate == prev {
        *status = candidate;
    }
}

/// Events for phase changes (and the first invalid SQL).
async fn phase_events<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    old: Option<Phase>,
    new: Phase,
    message: &str,
) {
    if old == Some(new) {
        return;
    }
    let type_ = match new {
        Phase::Failed | Phase::Degraded => EventType::Warning,
        _ => EventType::Normal,
    };
    let from = old.map_or("None", Phase::as_str);
    publish(
        ctx,
        obj,
        type_,
        new.as_str(),
        format!("phase {from} → {}: {message}", new.as_str()),
    )
    .await;
}

/// The SQL of a query: inline, or from its ConfigMap.
async fn resolve_sql(q: &StreamQuery, client: &Client) -> Result<Result<String, String>, Error> {
    if let Some(sql) = &q.spec.sql {
        return Ok(Ok(sql.clone()));
    }
    let Some(r) = &q.spec.sql_config_map else {
        return Ok(Err("neither sql nor sqlConfigMap is set".into()));
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &q.namespace().unwrap_or_default());
    Ok(match cms.get_opt(&r.name).await? {
        None => Err(format!("ConfigMap {} not found", r.name)),
        Some(cm) => cm
            .data
            .and_then(|mut d| d.remove(&r.key))
            .ok_or_else(|| format!("ConfigMap {} has no key {}", r.name, r.key)),
    })
}

fn sum<V: Copy + Into<i128>>(m: &std::collections::BTreeMap<String, V>) -> i128 {
    m.values().map(|v| (*v).into()).sum()
}

/// Copies the worker's figures into the status.
fn apply_worker_figures(s: &mut StreamQueryStatus, w: &WorkerStatus, now: Timestamp) {
    s.records_in = Some(sum(&w.records_in) as u64);
    s.records_out = Some(sum(&w.records_out) as u64);
    s.late_events = Some(sum(&w.late_events) as u64);
    s.dead_letters = Some(sum(&w.dead_letters) as u64);
    s.lag = Some(w.total_lag());
    s.last_error = w.last_error.as_deref().map(status::bounded_error);
    s.worker_state = Some(
        serde_json::to_value(w.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    );
    s.last_checkpoint = w
        .last_checkpoint
        .as_ref()
        .map(|c| tickflow_crds::CheckpointStatus {
            id: c.id,
            time: status::rfc3339_ms(c.time_ms),
            size_bytes: c.bytes,
        });
    s.worker_reported_at = Some(now.to_string());
}

/// What the pods and (when due) the worker itself report.
struct Observed {
    rollout: Rollout,
    /// A fresh /status, when one was due and a pod answered.
    worker: Option<WorkerStatus>,
    problem: Option<String>,
}

/// Lists the workload's pods and, at most once per refresh interval, reads
/// the worker's /status (status writes wake the reconciler: reading the
/// worker on every pass would make that a busy loop).
async fn observe(
    ctx: &Context,
    ns: &str,
    selector: &str,
    deployment: &Deployment,
    last_report: Option<&str>,
    last_problem: Option<String>,
    now: Timestamp,
) -> Result<Observed, Error> {
    let mut rollout = Rollout::of(Some(deployment));
    let pods = worker_status::observe(&ctx.client, ns, selector).await?;
    // Terminating pods still run (a final checkpoint): count them.
    rollout.replicas = rollout.replicas.max(pods.total);
    let due = last_report
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| now.duration_since(t).unsigned_abs() >= ctx.refresh);
    let worker = if due && rollout.ready > 0 && !pods.running_ips.is_empty() {
        worker_status::fetch(pods.running_ips.clone()).await
    } else {
        None
    };
    let problem = match &worker {
        Some(w) => status::worker_problem(w),
        // Not read this pass: keep what the last report said.
        None => last_problem,
    }
    .or(pods.failing);
    Ok(Observed {
        rollout,
        worker,
        problem,
    })
}

/// The problem the last worker report in a status recorded.
fn previous_problem(worker_state: Option<&str>, last_error: Option<&String>) -> Option<String> {
    matches!(worker_state, Some("failed" | "degraded")).then(|| {
        last_error
            .cloned()
            .unwrap_or_else(|| "worker is failing".into())
    })
}

/// Conditions of a resource the operator refuses to run (stamped), with a
/// Warning event the first time.
async fn refused<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    previous: &[Condition],
    health: Health,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let degraded = health
        .conditions
        .iter()
        .find(|c| c.type_ == condition::DEGRADED)
        .cloned();
    if let Some(d) = degraded
        && !previous
            .iter()
            .any(|p| p.type_ == d.type_ && p.reason == d.reason && p.message == d.message)
    {
        publish(ctx, obj, EventType::Warning, &d.reason, d.message.clone()).await;
    }
    status::stamp(health.conditions, previous, generation, now)
}

/// Writes the status of a query the operator does not run (`health`),
/// the rest of its status as it was.
async fn refuse_query(
    ctx: &Context,
    q: &StreamQuery,
    api: &Api<StreamQuery>,
    health: Health,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let previous = q.status.as_ref();
    let prev = previous.cloned().unwrap_or_default();
    let mut st = prev.clone();
    st.phase = Some(health.phase);
    st.observed_generation = q.metadata.generation;
    st.conditions = refused(ctx, q, &prev.conditions, health, q.metadata.generation, now).await;
    write_status(api, q, &st, previous, &ctx.metrics).await
}

/// Applies the checkpoint PVC's spec, then, as a separate change, its
/// ownership: a refused resize (most PVC fields are immutable) must neither
/// stop the query nor keep a PVC owned that `retainOnDelete` should keep.
async fn apply_pvc(
    ctx: &Context,
    q: &StreamQuery,
    desired_pvc: &PersistentVolumeClaim,
) -> Result<VolumeReport, Error> {
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &q.namespace().unwrap_or_default());
    let name = desired_pvc.name_any();
    let live = pvcs.get_opt(&name).await?;
    let mut pvc = desired_pvc.clone();
    desired::keep_live_access_modes(q, &mut pvc, live.as_ref());
    let mut report = VolumeReport {
        retained: q.spec.checkpoint.retain_on_delete,
        ..VolumeReport::default()
    };
    let live = match apply(&pvcs, &pvc, &ctx.metrics).await {
        Ok(applied) => Some(applied),
        // 422: an immutable field (access modes; any size while unbound);
        // 403: the resize admission check (the StorageClass cannot expand).
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => {
            report.spec_refused = Some(s.message.clone());
            live
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(patch) = live
        .as_ref()
        .and_then(|l| desired::pvc_ownership_patch(q, l))
    {
        let params = PatchParams {
            field_manager: Some(OWNERSHIP_MANAGER.into()),
            ..PatchParams::default()
        };
        if let Err(e) = pvcs.patch(&name, &params, &Patch::Strategic(&patch)).await {
            tracing::warn!(pvc = %name, "updating the owner reference: {e}");
            report.ownership_failed = Some(e.to_string());
        }
    }
    Ok(report)
}

pub async fn reconcile_query(q: Arc<StreamQuery>, ctx: Arc<Context>) -> Result<Action, Error> {
    timed(
        "StreamQuery",
        q.as_ref(),
        &ctx,
        reconcile_query_inner(&q, &ctx),
    )
    .await
}

/// Runs one reconcile of `obj`, counts it in the metrics and, once it
/// succeeds, forgets the failures remembered for `obj`'s back-off.
async fn timed<K: Resource<DynamicType = ()>>(
    kind: &'static str,
    obj: &K,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let t0 = Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciled(kind, result.is_ok(), t0.elapsed());
    if result.is_ok() && ctx.failures.lock().unwrap().remove(&key(obj)).is_some() {
        ctx.count_remembered();
    }
    result
}

async fn reconcile_query_inner(q: &StreamQuery, ctx: &Context) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let name = q.name_any();
    let client = &ctx.client;
    let api: Api<StreamQuery> = Api::namespaced(client.clone(), &ns);
    let previous = q.status.clone();
    let prev = previous.clone().unwrap_or_default();
    let now = Timestamp::now();

    if let Err(message) = desired::check_image(q.spec.image.as_deref(), &ctx.defaults) {
        // Nothing is created or updated (an existing Deployment keeps the
        // image it was last allowed to run).
        let health = status::image_not_allowed_health(&message);
        refuse_query(ctx, q, &api, health, now).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let checked = match resolve_sql(q, client).await? {
        Ok(sql) => match sql_check::check(&q.spec, &sql) {
            Ok(checked) => Ok((sql, checked)),
            Err(message) => Err(("InvalidSql", message)),
        },
        Err(message) => Err(("SqlUnavailable", message)),
    };
    let (sql, checked) = match checked {
        Ok(ok) => ok,
        Err((reason, message)) => {
            // Invalid: nothing is created (an existing Deployment keeps
            // running the last valid query).
            let health = status::invalid_query_health(reason, &message);
            let mut st = prev.clone();
            st.phase = Some(health.phase);
            st.observed_generation = q.metadata.generation;
            st.conditions = status::stamp(
                health.conditions,
                &prev.conditions,
                q.metadata.generation,
                now,
            );
            st.streams.clear();
            st.output_topics.clear();
            let was_invalid = prev.conditions.iter().any(|c| {
                c.type_ == condition::SQL_VALID && c.status == "False" && c.message == message
            });
            if !was_invalid {
                publish(ctx, q, EventType::Warning, reason, message.clone()).await;
            }
            write_status(&api, q, &st, previous.as_ref(), &ctx.metrics).await?;
            // A ConfigMap may appear; an invalid spec waits for an edit (which
            // triggers a reconcile by itself).
            return Ok(Action::requeue(if reason == "SqlUnavailable" {
                Duration::from_secs(15)
            } else {
                Duration::from_secs(300)
            }));
        }
    };

    if let Some(workers) = q.spec.parallelism {
        return reconcile_parallel(q, ctx, &sql, &checked, workers, now).await;
    }

    let objs = desired::stream_query(q, &sql, &checked, &ctx.defaults);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let objects = [
        serde_json::to_value(&objs.config_map).expect("serializable"),
        serde_json::to_value(&objs.pvc).expect("serializable"),
        serde_json::to_value(&objs.deployment).expect("serializable"),
        serde_json::to_value(&objs.service).expect("serializable"),
    ];
    let (deployment, volume) = ensure_applied(
        ctx,
        key(q),
        &objects,
        &deployments,
        &objs.deployment,
        || async {
            apply(
                &Api::namespaced(client.clone(), &ns),
                &objs.config_map,
                &ctx.metrics,
            )
            .await?;
            let volume = apply_pvc(ctx, q, &objs.pvc).await?;
            let d = apply(&deployments, &objs.deployment, &ctx.metrics).await?;
            apply(
                &Api::<Service>::namespaced(client.clone(), &ns),
                &objs.service,
                &ctx.metrics,
            )
            .await?;
            // A failed ownership change is retried on the next pass.
            let settled = volume.ownership_failed.is_none();
            Ok(Applied {
                deployment: d,
                report: volume,
                settled,
            })
        },
    )
    .await?;
    let Observed {
        rollout,
        worker,
        problem,
    } = observe(
        ctx,
        &ns,
        &desired::selector_string(desired::QUERY_COMPONENT, &name),
        &deployment,
        prev.worker_reported_at.as_deref(),
        previous_problem(prev.worker_state.as_deref(), prev.last_error.as_ref()),
        now,
    )
    .await?;
    let health = status::workload_health(q.spec.state, rollout, problem.as_deref());
    let mut conditions = vec![status::sql_valid(&checked.streams)];
    conditions.extend(health.conditions);
    let volume_condition = match &volume {
        Some(report) => Some(status::checkpoint_volume(report)),
        // Not applied this pass: what the last apply found still holds.
        None => prev
            .conditions
            .iter()
            .find(|c| c.type_ == condition::CHECKPOINT_VOLUME)
            .cloned(),
    };
    if let Some(c) = volume_condition {
        let known = prev
            .conditions
            .iter()
            .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason);
        if c.status == "False" && !known {
            publish(ctx, q, EventType::Warning, &c.reason, c.message.clone()).await;
        }
        conditions.push(c);
    }
    let mut st = prev.clone();
    st.phase = Some(health.phase);
    st.observed_generation = q.metadata.generation;
    st.conditions = status::stamp(conditions, &prev.conditions, q.metadata.generation, now);
    st.ready_replicas = Some(rollout.ready);
    st.streams = checked.streams.clone();
    st.output_topics = checked
        .outputs
        .iter()
        .filter_map(|(_, o)| o.topic().map(str::to_string))
        .collect();
    if let Some(w) = &worker {
        apply_worker_figures(&mut st, w, now);
    }
    let message = ready_message(&st.conditions);
    phase_events(ctx, q, prev.phase, health.phase, &message).await;
    keep_report_time_if_unchanged(&mut st, previous.as_ref());
    write_status(&api, q, &st, previous.as_ref(), &ctx.metrics).await?;
    Ok(requeue_after(q.spec.state, health.phase, ctx.refresh))
}

/// A query with `spec.parallelism`: one Deployment per worker, no PVC.
/// Each pass lists the query's worker Deployments and pods, lets
/// [`rescale::plan`] decide, and does that one step: scale everything to
/// zero, wait (polling: pods are not watched), or apply the set and delete
/// what it has no place for. The status has an entry per worker and the
/// sums of their figures.
async fn reconcile_parallel(
    q: &StreamQuery,
    ctx: &Context,
    sql: &str,
    checked: &sql_check::CheckedQuery,
    workers: i32,
    now: Timestamp,
) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let name = q.name_any();
    let client = &ctx.client;
    let api: Api<StreamQuery> = Api::namespaced(client.clone(), &ns);
    let previous = q.status.clone();
    let prev = previous.clone().unwrap_or_default();
    let objs = desired::parallel_stream_query(q, sql, checked, &ctx.defaults, workers);
    // As clamped to the schema's bounds.
    let workers = objs.deployments.len() as i32;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let labelled = deployments
        .list(&ListParams::default().labels(&desired::worker_selector_string(&name)))
        .await?
        .items;
    let taken = desired::worker_names_taken(q, workers, &labelled);
    if !taken.is_empty() {
        refuse_query(ctx, q, &api, status::name_taken_health(&taken), now).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    // Only Deployments this query controls are scaled, applied or deleted.
    let live: Vec<Deployment> = labelled
        .into_iter()
        .filter(|d| desired::controlled_by(q, &d.metadata))
        .collect();
    // Every pod of the query, terminating ones included: the old set is
    // gone only when none of its pods is left.
    let pods = worker_status::list(
        client,
        &ns,
        &desired::selector_string(desired::QUERY_COMPONENT, &name),
    )
    .await?;
    let worker_pods = worker_status::worker_pods(&pods);
    let plan = rescale::plan(
        &name,
        workers,
        &live.iter().map(rescale::LiveWorker::of).collect::<Vec<_>>(),
        &worker_pods.iter().map(|p| p.slot).collect::<Vec<_>>(),
    );

    // The worker Deployments as applied (empty while rescaling).
    let current: Vec<Deployment> = match &plan {
        Plan::Stop {
            from,
            to,
            scale_down,
        } => {
            let already = prev
                .conditions
                .iter()
                .any(|c| c.type_ == condition::PROGRESSING && c.reason == "Rescaling");
            if !already {
                publish(
                    ctx,
                    q,
                    EventType::Normal,
                    "Rescaling",
                    format!(
                        "Rescaling from {from} to {to} workers: every worker stops \
                         (final checkpoint) before the new set starts"
                    ),
                )
                .await;
            }
            let params = PatchParams {
                field_manager: Some(RESCALE_MANAGER.into()),
                ..PatchParams::default()
            };
            let zero = serde_json::json!({"spec": {"replicas": 0}});
            for d in scale_down {
                deployments.patch(d, &params, &Patch::Merge(&zero)).await?;
            }
            // The next apply must run, whatever was applied before.
            ctx.applied.lock().unwrap().remove(&key(q));
            ctx.count_remembered();
            Vec::new()
        }
        Plan::Wait { .. } => Vec::new(),
        Plan::Apply {
            delete,
            rescaled_from,
        } => {
            let applied = apply_workers(ctx, q, &objs, &live).await?;
            for d in delete {
                match deployments.delete(d, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(from) = rescaled_from {
                publish(
                    ctx,
                    q,
                    EventType::Normal,
                    "Rescaled",
                    format!(
                        "Rescaled from {from} to {workers} workers: the old set is gone, \
                         the new one starts"
                    ),
                )
                .await;
            }
            applied
        }
    };

    let rescaling = plan.rescaling().is_some();
    // The workers' own figures, at most once per refresh interval, from
    // the pods of the current set only.
    let due = prev
        .worker_reported_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| now.duration_since(t).unsigned_abs() >= ctx.refresh);
    let mut reports = BTreeMap::new();
    if due && !rescaling {
        let targets: Vec<(i32, String)> = worker_pods
            .iter()
            .filter_map(|p| {
                let slot = p.slot.filter(|s| s.is_in(workers))?;
                Some((slot.index, p.running_ip.clone()?))
            })
            .collect();
        let fetched = futures::future::join_all(
            targets
                .into_iter()
                .map(|(i, ip)| async move { (i, worker_status::fetch(vec![ip]).await) }),
        )
        .await;
        reports.extend(fetched.into_iter().filter_map(|(i, w)| Some((i, w?))));
    }
    let entries = status::worker_entries(&name, workers, &worker_pods, &reports, &prev.workers);
    let totals = status::worker_totals(&entries);
    let health = match &plan {
        Plan::Stop { from, to, .. } => status::rescaling_health(*from, *to, None),
        Plan::Wait { from, to, pods } => status::rescaling_health(*from, *to, Some(*pods)),
        Plan::Apply { .. } => {
            let mut rollout = status::Rollout::of_set(
                &current
                    .iter()
                    .map(Some)
                    .collect::<Vec<Option<&Deployment>>>(),
            );
            // Terminating pods still run (a final checkpoint): count them.
            rollout.replicas = rollout.replicas.max(pods.len() as i32);
            let problem =
                status::workers_problem(&entries).or(worker_status::summarize(&pods).failing);
            status::workload_health(q.spec.state, rollout, problem.as_deref())
        }
    };

    let mut conditions = vec![status::sql_valid(&checked.streams)];
    conditions.extend(health.conditions);
    let mut st = prev.clone();
    st.phase = Some(health.phase);
    st.observed_generation = q.metadata.generation;
    st.conditions = status::stamp(conditions, &prev.conditions, q.metadata.generation, now);
    st.ready_replicas = Some(entries.iter().filter(|e| e.ready).count() as i32);
    st.streams = checked.streams.clone();
    st.output_topics = checked
        .outputs
        .iter()
        .filter_map(|(_, o)| o.topic().map(str::to_string))
        .collect();
    st.selector = Some(desired::selector_string(desired::QUERY_COMPONENT, &name));
    st.records_in = totals.records_in;
    st.records_out = totals.records_out;
    st.late_events = totals.late_events;
    st.dead_letters = totals.dead_letters;
    st.lag = totals.lag;
    st.last_checkpoint = totals.last_checkpoint;
    st.worker_state = totals.worker_state;
    st.last_error = totals.last_error;
    st.workers_reporting = Some(totals.reporting);
    st.workers = entries;
    if !reports.is_empty() {
        st.worker_reported_at = Some(now.to_string());
    }
    let message = ready_message(&st.conditions);
    phase_events(ctx, q, prev.phase, health.phase, &message).await;
    keep_report_time_if_unchanged(&mut st, previous.as_ref());
    write_status(&api, q, &st, previous.as_ref(), &ctx.metrics).await?;
    Ok(if rescaling {
        // Pods are not watched: look again soon while the old set stops.
        Action::requeue(Duration::from_secs(2))
    } else {
        requeue_after(q.spec.state, health.phase, ctx.refresh)
    })
}

/// Applies a parallel query's ConfigMap, worker Deployments and Service,
/// unless this process applied the same objects recently and every live
/// Deployment still matches; returns the worker Deployments as they are
/// now, by index.
async fn apply_workers(
    ctx: &Context,
    q: &StreamQuery,
    objs: &desired::ParallelQueryObjects,
    live: &[Deployment],
) -> Result<Vec<Deployment>, Error> {
    let ns = q.namespace().unwrap_or_default();
    let mut objects = vec![
        serde_json::to_value(&objs.config_map).expect("serializable"),
        serde_json::to_value(&objs.service).expect("serializable"),
    ];
    objects.extend(
        objs.deployments
            .iter()
            .map(|d| serde_json::to_value(d).expect("serializable")),
    );
    let print = fingerprint(&objects);
    let k = key(q);
    let recent = ctx.applied_recently(&k, &print);
    let live_of = |want: &Deployment| {
        live.iter()
            .find(|l| l.metadata.name == want.metadata.name)
            .filter(|l| same_deployment(l, want))
            .cloned()
    };
    if recent {
        let unchanged: Option<Vec<Deployment>> = objs.deployments.iter().map(live_of).collect();
        if let Some(unchanged) = unchanged {
            return Ok(unchanged);
        }
    }
    let client = &ctx.client;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &objs.config_map,
        &ctx.metrics,
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut applied = Vec::with_capacity(objs.deployments.len());
    for d in &objs.deployments {
        applied.push(apply(&deployments, d, &ctx.metrics).await?);
    }
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &objs.service,
        &ctx.metrics,
    )
    .await?;
    ctx.applied
        .lock()
        .unwrap()
        .insert(k, (print, Instant::now()));
    ctx.count_remembered();
    Ok(applied)
}

fn requeue_after(state: RunState, phase: Phase, refresh: Duration) -> Action {
    match (state, phase) {
        // Pods are not watched: poll while they terminate or start.
        (RunState::Suspended, Phase::Suspended) => Action::requeue(Duration::from_secs(300)),
        (RunState::Suspended, _) => Action::requeue(Duration::from_secs(2)),
        // Crash loops do not change the Deployment's status: look again soon.
        (_, Phase::Pending) => Action::requeue(Duration::from_secs(30)),
        // Deployment changes wake the reconciler through the owns() watch;
        // the periodic pass refreshes the worker's figures.
        (_, Phase::Running | Phase::Degraded) => Action::requeue(refresh),
        _ => Action::requeue(Duration::from_secs(300)),
    }
}

pub async fn reconcile_producer(
    p: Arc<MarketProducer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    timed(
        "MarketProducer",
        p.as_ref(),
        &ctx,
        reconcile_producer_inner(&p, &ctx),
    )
    .await
}

async fn reconcile_producer_inner(p: &MarketProducer, ctx: &Context) -> Result<Action, Error> {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let client = &ctx.client;
    let api: Api<MarketProducer> = Api::namespaced(client.clone(), &ns);
    let previous = p.status.clone();
    let prev = previous.clone().unwrap_or_default();
    let now = Timestamp::now();

    if let Err(message) = desired::check_image(p.spec.image.as_deref(), &ctx.defaults) {
        let health = status::image_not_allowed_health(&message);
        let mut st = prev.clone();
        st.phase = Some(health.phase);
        st.observed_generation = p.metadata.generation;
        st.conditions = refused(ctx, p, &prev.conditions, health, p.metadata.generation, now).await;
        write_status(&api, p, &st, previous.as_ref(), &ctx.metrics).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let objs = desired::market_producer(p, &ctx.defaults);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let objects = [
        serde_json::to_value(&objs.deployment).expect("serializable"),
        serde_json::to_value(&objs.service).expect("serializable"),
    ];
    let (deployment, _) = ensure_applied(
        ctx,
        key(p),
        &objects,
        &deployments,
        &objs.deployment,
        || async {
            let d = apply(&deployments, &objs.deployment, &ctx.metrics).await?;
            apply(
                &Api::<Service>::namespaced(client.clone(), &ns),
                &objs.service,
                &ctx.metrics,
            )
            .await?;
            Ok(Applied {
                deployment: d,
                report: (),
                settled: true,
            })
        },
    )
    .await?;
    let Observed {
        rollout,
        worker,
        problem,
    } = observe(
        ctx,
        &ns,
        &desired::selector_string(desired::PRODUCER_COMPONENT, &name),
        &deployment,
        prev.worker_reported_at.as_deref(),
        previous_problem(prev.worker_state.as_deref(), prev.last_error.as_ref()),
        now,
    )
    .await?;
    let health = status::workload_health(p.spec.state, rollout, problem.as_deref());
    let mut st = MarketProducerStatus {
        phase: Some(health.phase),
        observed_generation: p.metadata.generation,
        conditions: status::stamp(
            health.conditions,
            &prev.conditions,
            p.metadata.generation,
            now,
        ),
        ready_replicas: Some(rollout.ready),
        symbols: Some(if p.spec.symbols.is_empty() {
            tickflow_crds::DEFAULT_SYMBOLS.len() as u32
        } else {
            p.spec.symbols.len() as u32
        }),
        records_out: worker
            .as_ref()
            .map(|w| sum(&w.records_out) as u64)
            .or(prev.records_out),
        last_error: worker.as_ref().map_or(prev.last_error.clone(), |w| {
            w.last_error.as_deref().map(status::bounded_error)
        }),
        worker_state: worker
            .as_ref()
            .and_then(|w| serde_json::to_value(w.state).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .or(prev.worker_state.clone()),
        worker_reported_at: if worker.is_some() {
            Some(now.to_string())
        } else {
            prev.worker_reported_at.clone()
        },
    };
    let message = ready_message(&st.conditions);
    phase_events(ctx, p, prev.phase, health.phase, &message).await;
    keep_report_time_if_unchanged(&mut st, previous.as_ref());
    write_status(&api, p, &st, previous.as_ref(), &ctx.metrics).await?;
    Ok(requeue_after(p.spec.state, health.phase, ctx.refresh))
}

/// Where the controllers look: one namespace or all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What a controller's output says: a scheduled object that no longer
/// exists (deleted) is forgotten; other errors are logged.
fn after_reconcile<K>(
    ctx: &Context,
    kind: &str,
    r: Result<(ObjectRef<K>, Action), ControllerError<Error, watcher::Error>>,
) where
    K: Resource<DynamicType = ()>,
{
    match r {
        Ok(_) => {}
        Err(ControllerError::ObjectNotFound(obj)) => ctx.forget(&key_of(
            kind,
            obj.namespace.as_deref().unwrap_or_default(),
            &obj.name,
        )),
        Err(e) => tracing::debug!("{kind} controller: {e}"),
    }
}

fn owned(component: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by=tickflow-operator,app.kubernetes.io/component={component}"
    ))
}

/// The phases of the resources in a controller's cache, for the metric.
fn phase_source<K>(
    store: kube::runtime::reflector::Store<K>,
    phase: fn(&K) -> Option<Phase>,
) -> crate::metrics::PhaseSource
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    Box::new(move || {
        store
            .state()
            .iter()
            .filter_map(|o| Some((o.namespace()?, o.name_any(), phase(o)?)))
            .collect()
    })
}

/// The StreamQuery controller over one namespace (or all).
async fn run_queries(
    ctx: Arc<Context>,
    ns: Option<String>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ns.as_deref();
    let controller = Controller::new(
        scoped::<StreamQuery>(&client, ns),
        watcher::Config::default(),
    );
    let queries = controller.store();
    ctx.metrics.add_phase_source(
        "StreamQuery",
        phase_source(queries.clone(), |q| q.status.as_ref()?.phase),
    );
    controller
        .owns(
            scoped::<Deployment>(&client, ns),
            owned(desired::QUERY_COMPONENT),
        )
        // A deleted or edited owned object wakes the query (re-applied within
        // REAPPLY_EVERY).
        .owns(
            scoped::<ConfigMap>(&client, ns),
            owned(desired::QUERY_COMPONENT),
        )
        .owns(
            scoped::<Service>(&client, ns),
            owned(desired::QUERY_COMPONENT),
        )
        // A ConfigMap named by spec.sqlConfigMap: an edit (or its creation)
        // reaches the queries that read it at once.
        .watches(
            scoped::<ConfigMap>(&client, ns),
            watcher::Config::default(),
            move |cm: ConfigMap| {
                let (cm_ns, cm_name) = (cm.namespace().unwrap_or_default(), cm.name_any());
                queries
                    .state()
                    .into_iter()
                    .filter(|q| desired::references_config_map(q, &cm_ns, &cm_name))
                    .map(|q| ObjectRef::from_obj(q.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(config)
        .graceful_shutdown_on(stop)
        .run(reconcile_query, error_policy, ctx.clone())
        .for_each(|r| {
            after_reconcile(&ctx, "StreamQuery", r);
            std::future::ready(())
        })
        .await;
}

/// The MarketProducer controller over one namespace (or all).
async fn run_producers(
    ctx: Arc<Context>,
    ns: Option<String>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ns.as_deref();
    let controller = Controller::new(
        scoped::<MarketProducer>(&client, ns),
        watcher::Config::default(),
    );
    ctx.metrics.add_phase_source(
        "MarketProducer",
        phase_source(controller.store(), |p| p.status.as_ref()?.phase),
    );
    controller
        .owns(
            scoped::<Deployment>(&client, ns),
            owned(desired::PRODUCER_COMPONENT),
        )
        .owns(
            scoped::<Service>(&client, ns),
            owned(desired::PRODUCER_COMPONENT),
        )
        .with_config(config)
        .graceful_shutdown_on(stop)
        .run(reconcile_producer, error_policy, ctx.clone())
        .for_each(|r| {
            after_reconcile(&ctx, "MarketProducer", r);
            std::future::ready(())
        })
        .await;
}

/// Runs both controllers, over each of `namespaces` (empty: all namespaces,
/// with cluster-wide watches), until the shutdown futures resolve (one per
/// kind: each controller waits for its reconciles in flight to finish).
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    concurrency: u16,
    shutdown: [tokio::sync::oneshot::Receiver<()>; 2],
) {
    use futures::FutureExt;
    let [stop_queries, stop_producers] = shutdown.map(|rx| rx.map(|_| ()).shared());
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let config = ControllerConfig::default().concurrency(concurrency);
    let mut controllers = Vec::new();
    for ns in scopes {
        controllers.push(
            run_queries(
                ctx.clone(),
                ns.clone(),
                config.clone(),
                stop_queries.clone(),
            )
            .boxed(),
        );
        controllers
            .push(run_producers(ctx.clone(), ns, config.clone(), stop_producers.clone()).boxed());
    }
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_at_a_character_boundary() {
        let s = status::truncate_bytes("é".repeat(600), 1000);
        assert_eq!(s.len(), 1000);
        assert_eq!(status::truncate_bytes("short".into(), 1000), "short");
    }

    #[test]
    fn a_huge_worker_error_is_cut_before_it_reaches_the_status() {
        let w = WorkerStatus {
            state: tickflow_crds::WorkerState::Failed,
            last_error: Some("e".repeat(1 << 20)),
            ..WorkerStatus::default()
        };
        let mut s = StreamQueryStatus::default();
        apply_worker_figures(&mut s, &w, Timestamp::UNIX_EPOCH);
        let e = s.last_error.unwrap();
        assert!(e.len() <= 4096, "lastError of {} bytes", e.len());
        assert!(e.starts_with("eee"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
