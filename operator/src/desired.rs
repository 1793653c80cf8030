//! The Kubernetes objects a resource should have: pure functions from the
//! resource (and the operator's defaults) to ConfigMap, PVC, Deployment and
//! Service. The controller server-side-applies what these return.
//!
//! A StreamQuery without `spec.parallelism` is one Deployment with its
//! checkpoint PVC ([`stream_query`]); with it, one Deployment per worker and
//! no PVC ([`parallel_stream_query`]). Invariant: a worker's container is
//! the classic one plus three env vars appended at the end, so a classic
//! query's objects (and spec hash) do not change with this code; a worker's
//! slot (index, number of workers) is in its env, where the worker reads it
//! and where the controller compares it ([`worker_slot`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tickflow_crds::{
    AccessMode, Format, KafkaConnection, MAX_PARALLELISM, MarketProducer, PostgresConnection,
    RunState, StreamQuery, UpgradeMode,
};

use crate::sql_check::CheckedQuery;

/// Port of the worker's HTTP endpoint (/metrics, /healthz, /readyz, /status).
pub const WORKER_PORT: u16 = 8080;
/// Key of the SQL in the query's ConfigMap.
pub const SQL_KEY: &str = "query.sql";
/// Pod template annotation whose change rolls the Deployment.
pub const SPEC_HASH_ANNOTATION: &str = "tickflow.io/spec-hash";
const SQL_DIR: &str = "/etc/tickflow/sql";
const CHECKPOINT_DIR: &str = "/var/lib/tickflow/checkpoints";
const SASL_DIR: &str = "/etc/tickflow/kafka-sasl";
const CA_DIR: &str = "/etc/tickflow/kafka-ca";
const REGISTRY_AUTH_DIR: &str = "/etc/tickflow/registry-auth";
const REGISTRY_CA_DIR: &str = "/etc/tickflow/registry-ca";
const POSTGRES_URL_DIR: &str = "/etc/tickflow/postgres-url";
const POSTGRES_PASSWORD_DIR: &str = "/etc/tickflow/postgres-password";
const POSTGRES_CA_DIR: &str = "/etc/tickflow/postgres-ca";
const POSTGRES_CLIENT_CERT_DIR: &str = "/etc/tickflow/postgres-client-cert";
const POSTGRES_CLIENT_KEY_DIR: &str = "/etc/tickflow/postgres-client-key";
/// Non-root user of the worker image (distroless `nonroot`).
const WORKER_UID: i64 = 65532;

/// Operator-wide defaults (from the Helm chart's values).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub worker_image: String,
    pub kafka_brokers: String,
    pub schema_registry_url: String,
    /// Image repositories a resource's `spec.image` may name (`repo` exactly,
    /// or `prefix/*` for everything under a prefix). Empty: only the
    /// repository of `worker_image`.
    pub allowed_image_repositories: Vec<String>,
    /// Access mode of new checkpoint PVCs whose spec does not name one.
    pub checkpoint_access_mode: AccessMode,
}

/// The repository of an image reference: without `@digest` and `:tag`
/// (`host:port/a/b:1.0@sha256:…` → `host:port/a/b`).
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split_once('@').map_or(image, |(r, _)| r);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Whether a resource may run `image` (its `spec.image`; None is the
/// operator's own worker image): Err says why not.
pub fn check_image(image: Option<&str>, defaults: &Defaults) -> Result<(), String> {
    let Some(image) = image else { return Ok(()) };
    let repo = image_repository(image);
    let own = [image_repository(&defaults.worker_image).to_string()];
    let allowed: &[String] = if defaults.allowed_image_repositories.is_empty() {
        &own
    } else {
        &defaults.allowed_image_repositories
    };
    let ok = !repo.is_empty()
        && allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => repo.starts_with(prefix),
            _ => a == repo,
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image {image:?} is not allowed: its repository {repo:?} is not in the operator's \
             allow-list ({}); ask the cluster admin to add it to the chart's \
             workerImage.allowedRepositories, or leave spec.image out",
            allowed.join(", ")
        ))
    }
}

/// Whether query `q` takes its SQL from ConfigMap `namespace/name`.
pub fn references_config_map(q: &StreamQuery, namespace: &str, name: &str) -> bool {
    q.metadata.namespace.as_deref() == Some(namespace)
        && q.spec
            .sql_config_map
            .as_ref()
            .is_some_and(|r| r.name == name)
}

/// The access modes the checkpoint PVC gets: an existing PVC keeps its own
/// (they are immutable) unless the spec names one explicitly.
pub fn keep_live_access_modes(
    q: &StreamQuery,
    desired: &mut PersistentVolumeClaim,
    live: Option<&PersistentVolumeClaim>,
) {
    if q.spec.checkpoint.access_mode.is_some() {
        return;
    }
    let Some(modes) = live
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.access_modes.clone())
    else {
        return;
    };
    if let Some(spec) = desired.spec.as_mut() {
        spec.access_modes = Some(modes);
    }
}

/// The strategic-merge patch that brings the live PVC's owner references in
/// line with `retainOnDelete` (applied apart from the PVC's spec, so that a
/// refused resize cannot keep a retained PVC owned); None when they already
/// are.
pub fn pvc_ownership_patch(
    q: &StreamQuery,
    live: &PersistentVolumeClaim,
) -> Option<serde_json::Value> {
    let owner = q.controller_owner_ref(&())?;
    let owned = live
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner.uid);
    match (q.spec.checkpoint.retain_on_delete, owned) {
        (true, true) => Some(serde_json::json!({"metadata": {"ownerReferences": [
            {"$patch": "delete", "uid": owner.uid}
        ]}})),
        (false, false) => Some(serde_json::json!({"metadata": {"ownerReferences": [owner]}})),
        _ => None,
    }
}

/// Objects of one StreamQuery.
#[derive(Clone, Debug)]
pub struct StreamQueryObjects {
    pub config_map: ConfigMap,
    pub pvc: PersistentVolumeClaim,
    pub deployment: Deployment,
    pub service: Service,
}

/// Objects of one MarketProducer.
#[derive(Clone, Debug)]
pub struct MarketProducerObjects {
    pub deployment: Deployment,
    pub service: Service,
}

pub fn config_map_name(query: &str) -> String {
    format!("{query}-sql")
}

pub fn pvc_name(query: &str) -> String {
    format!("{query}-checkpoints")
}

/// Labels of every object and pod of a resource.
pub fn labels(component: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "tickflow-worker".into()),
        // Not app.kubernetes.io/instance: Argo CD tracks its apps by that label.
        ("tickflow.io/instance".into(), instance.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/part-of".into(), "tickflow".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "tickflow-operator".into(),
        ),
    ])
}

/// The label selector of a resource's pods.
pub fn selector(component: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/component".into(), component.into()),
        ("tickflow.io/instance".into(), instance.into()),
    ])
}

pub fn selector_string(component: &str, instance: &str) -> String {
    selector(component, instance)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub const QUERY_COMPONENT: &str = "stream-query";
pub const PRODUCER_COMPONENT: &str = "market-producer";

fn meta(
    name: String,
    namespace: Option<String>,
    labels: &BTreeMap<String, String>,
    owner: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(labels.clone()),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn hash_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Secret keys mounted as files: never in the pod spec, never in env.
#[derive(Default)]
struct SecretFiles {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
}

impl SecretFiles {
    /// Mounts key `r` as `dir/file` (volume `name`); the returned variable
    /// `var` names the file.
    fn file(
        &mut self,
        var: &str,
        name: &str,
        dir: &str,
        r: &tickflow_crds::KeyRef,
        file: &str,
    ) -> EnvVar {
        self.volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(r.name.clone()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: r.key.clone(),
                    path: file.into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Volume::default()
        });
        self.mounts.push(VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        env(var, format!("{dir}/{file}"))
    }
}

/// The database of `table` sinks as the worker's environment: the URL as
/// a value or a mounted file, the password and TLS files as mounted files,
/// TLS settings under libpq's variable names (`PGSSLMODE`, …).
fn postgres_env(pg: Option<&PostgresConnection>, secrets: &mut SecretFiles) -> Vec<EnvVar> {
    let Some(pg) = pg else {
        return Vec::new();
    };
    let mut envs = Vec::new();
    if let Some(url) = &pg.url {
        envs.push(env("TICKFLOW_POSTGRES_URL", url.clone()));
    }
    if let Some(r) = &pg.url_secret_ref {
        envs.push(secrets.file(
            "TICKFLOW_POSTGRES_URL_FILE",
            "postgres-url",
            POSTGRES_URL_DIR,
            r,
            "url",
        ));
    }
    if let Some(r) = &pg.password_secret_ref {
        envs.push(secrets.file(
            "TICKFLOW_POSTGRES_PASSWORD_FILE",
            "postgres-password",
            POSTGRES_PASSWORD_DIR,
            r,
            "password",
        ));
    }
    // TLS under libpq's own variable names, which the worker reads.
    if let Some(mode) = pg.ssl_mode {
        envs.push(env("PGSSLMODE", mode.as_str()));
    }
    match &pg.ca_secret_ref {
        Some(r) => {
            envs.push(secrets.file("PGSSLROOTCERT", "postgres-ca", POSTGRES_CA_DIR, r, "ca.crt"))
        }
        None if pg.ssl_mode.is_some_and(|m| m.verifies()) => {
            envs.push(env("PGSSLROOTCERT", "system"));
        }
        None => {}
    }
    if let (Some(cert), Some(key)) = (&pg.client_cert_secret_ref, &pg.client_key_secret_ref) {
        envs.push(secrets.file(
            "PGSSLCERT",
            "postgres-client-cert",
            POSTGRES_CLIENT_CERT_DIR,
            cert,
            "tls.crt",
        ));
        envs.push(secrets.file(
            "PGSSLKEY",
            "postgres-client-key",
            POSTGRES_CLIENT_KEY_DIR,
            key,
            "tls.key",
        ));
    }
    envs
}

/// Kafka settings as the worker's environment, plus the Secret volumes they need.
fn kafka_env(
    kafka: Option<&KafkaConnection>,
    defaults: &Defaults,
    secrets: &mut SecretFiles,
) -> Vec<EnvVar> {
    let brokers = kafka
        .and_then(|k| k.bootstrap_servers.clone())
        .unwrap_or_else(|| defaults.kafka_brokers.clone());
    let registry = kafka
        .and_then(|k| k.schema_registry_url.clone())
        .unwrap_or_else(|| defaults.schema_registry_url.clone());
    let mut envs = vec![env("KAFKA_BROKERS", brokers)];
    if !registry.is_empty() {
        envs.push(env("SCHEMA_REGISTRY_URL", registry));
    }
    if let Some(sec) = kafka.and_then(|k| k.schema_registry_security.as_ref()) {
        if let Some(u) = &sec.username {
            envs.push(env("SCHEMA_REGISTRY_USERNAME", u.clone()));
        }
        if let Some(r) = &sec.password_secret_ref {
            envs.push(secrets.file(
                "SCHEMA_REGISTRY_PASSWORD_FILE",
                "registry-auth",
                REGISTRY_AUTH_DIR,
                r,
                "password",
            ));
        }
        if let Some(r) = &sec.ca_secret_ref {
            envs.push(secrets.file(
                "SCHEMA_REGISTRY_CA_LOCATION",
                "registry-ca",
                REGISTRY_CA_DIR,
                r,
                "ca.crt",
            ));
        }
    }
    if let Some(sec) = kafka.and_then(|k| k.security.as_ref()) {
        envs.push(env(
            "KAFKA_SECURITY_PROTOCOL",
            sec.protocol.as_str().replace('_', "-"),
        ));
        if let Some(m) = sec.sasl_mechanism {
            envs.push(env("KAFKA_SASL_MECHANISM", m.as_str()));
        }
        if let Some(u) = &sec.username {
            envs.push(env("KAFKA_SASL_USERNAME", u.clone()));
        }
        if let Some(r) = &sec.password_secret_ref {
            envs.push(secrets.file(
                "KAFKA_SASL_PASSWORD_FILE",
                "kafka-sasl",
                SASL_DIR,
                r,
                "password",
            ));
        }
        if let Some(r) = &sec.ca_secret_ref {
            envs.push(secrets.file("KAFKA_SSL_CA_LOCATION", "kafka-ca", CA_DIR, r, "ca.crt"));
        }
    }
    envs
}

fn hardened_container(
    name: &str,
    image: String,
    args: Vec<String>,
    envs: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    resources: Option<ResourceRequirements>,
) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Container {
        name: name.into(),
        image: Some(image),
        args: Some(args),
        env: Some(envs),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: WORKER_PORT.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Startup may include a checkpoint restore and a transaction recovery.
        startup_probe: Some(probe("/healthz", 2, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        // A worker that exits says why on its last log line: the kubelet
        // keeps it as the termination message, which the status shows.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(resources.unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("250m".into())),
            ("memory".into(), Quantity("256Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
        ..ResourceRequirements::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn deployment(
    name: &str,
    namespace: Option<String>,
    component: &str,
    owner: OwnerReference,
    replicas: i32,
    spec_hash: &str,
    container: Container,
    volumes: Vec<Volume>,
) -> Deployment {
    deployment_with(
        name.into(),
        namespace,
        labels(component, name),
        selector(component, name),
        owner,
        replicas,
        spec_hash,
        container,
        volumes,
    )
}

/// A worker Deployment: `labels` on it and its pods, `selector` (a subset
/// of the pod labels, immutable once created) choosing its pods.
#[allow(clippy::too_many_arguments)]
fn deployment_with(
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    owner: OwnerReference,
    replicas: i32,
    spec_hash: &str,
    container: Container,
    volumes: Vec<Volume>,
) -> Deployment {
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    Deployment {
        metadata: meta(name, namespace, &labels, Some(owner)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            // Never two workers on one checkpoint volume or transactional id.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (SPEC_HASH_ANNOTATION.into(), spec_hash.into()),
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), WORKER_PORT.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The worker never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // SIGTERM → final checkpoint and transaction commit.
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn service(
    name: &str,
    namespace: Option<String>,
    component: &str,
    owner: OwnerReference,
) -> Service {
    Service {
        metadata: meta(
            name.into(),
            namespace,
            &labels(component, name),
            Some(owner),
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector(component, name)),
            ports: Some(vec![ServicePort {
                name: Some("http-metrics".into()),
                port: WORKER_PORT.into(),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Hash of what the query's state depends on: a `stateless` upgrade starts
/// a new checkpoint directory whenever it changes.
pub fn query_state_hash(q: &StreamQuery, sql: &str) -> String {
    let s = &q.spec;
    let bindings = serde_json::to_string(&(
        &s.sources,
        &s.sinks,
        s.output_format,
        &s.allowed_lateness,
        s.start_from,
    ))
    .expect("serializable");
    hash_hex(&[sql, &bindings])
}

/// Everything a StreamQuery needs, for a query that passed [`crate::sql_check`].
pub fn stream_query(
    q: &StreamQuery,
    sql: &str,
    checked: &CheckedQuery,
    defaults: &Defaults,
) -> StreamQueryObjects {
    let name = q.name_any();
    let ns = q.namespace();
    let owner = q
        .controller_owner_ref(&())
        .expect("object from the API server");
    let spec = &q.spec;
    let labels = labels(QUERY_COMPONENT, &name);

    let config_map = query_config_map(q, sql, &owner);

    // A retained PVC has no owner, so garbage collection leaves it alone.
    let pvc_owner = (!spec.checkpoint.retain_on_delete).then(|| owner.clone());
    let pvc = PersistentVolumeClaim {
        metadata: meta(pvc_name(&name), ns.clone(), &labels, pvc_owner),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![
                spec.checkpoint
                    .access_mode
                    .unwrap_or(defaults.checkpoint_access_mode)
                    .as_str()
                    .into(),
            ]),
            storage_class_name: spec.checkpoint.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(spec.checkpoint.storage_size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    let (container, volumes) = query_worker(q, sql, checked, defaults, None);
    let deployment = deployment(
        &name,
        ns.clone(),
        QUERY_COMPONENT,
        owner.clone(),
        query_replicas(q),
        &query_spec_hash(q, sql, &container),
        container,
        volumes,
    );
    let service = service(&name, ns, QUERY_COMPONENT, owner);
    StreamQueryObjects {
        config_map,
        pvc,
        deployment,
        service,
    }
}

/// Objects of a StreamQuery with `spec.parallelism`: no PVC (the state is
/// in Kafka), one Deployment per worker.
#[derive(Clone, Debug)]
pub struct ParallelQueryObjects {
    pub config_map: ConfigMap,
    /// `<name>-w<i>` for i in 0..parallelism, in index order.
    pub deployments: Vec<Deployment>,
    /// One Service over every worker's pod.
    pub service: Service,
}

/// Everything a StreamQuery with `spec.parallelism = workers` needs: worker
/// i is the classic Deployment (same args, probes, security) named
/// `<name>-w<i>`, labelled with its index, told its index, the number of
/// workers and that its state lives in Kafka. `workers` is clamped to
/// 1..=[`MAX_PARALLELISM`] (the schema's bounds).
pub fn parallel_stream_query(
    q: &StreamQuery,
    sql: &str,
    checked: &CheckedQuery,
    defaults: &Defaults,
    workers: i32,
) -> ParallelQueryObjects {
    let name = q.name_any();
    let ns = q.namespace();
    let owner = q
        .controller_owner_ref(&())
        .expect("object from the API server");
    let workers = workers.clamp(1, MAX_PARALLELISM);
    let deployments = (0..workers)
        .map(|index| {
            let slot = WorkerSlot { index, workers };
            let (container, volumes) = query_worker(q, sql, checked, defaults, Some(slot));
            let mut labels = labels(QUERY_COMPONENT, &name);
            let mut selector = selector(QUERY_COMPONENT, &name);
            for l in [&mut labels, &mut selector] {
                l.insert(WORKER_INDEX_LABEL.into(), index.to_string());
            }
            deployment_with(
                worker_deployment_name(&name, index),
                ns.clone(),
                labels,
                selector,
                owner.clone(),
                query_replicas(q),
                &query_spec_hash(q, sql, &container),
                container,
                volumes,
            )
        })
        .collect();
    ParallelQueryObjects {
        config_map: query_config_map(q, sql, &owner),
        deployments,
        // Selects by query, not by worker: every worker's pod is behind it.
        service: service(&name, ns, QUERY_COMPONENT, owner),
    }
}

/// Pod label holding a worker's index (queries with parallelism only).
pub const WORKER_INDEX_LABEL: &str = "tickflow.io/worker-index";
/// Number of workers of the query, as the worker reads it.
pub const WORKERS_ENV: &str = "TICKFLOW_WORKERS";
/// This worker's index in 0..TICKFLOW_WORKERS.
pub const WORKER_INDEX_ENV: &str = "TICKFLOW_WORKER_INDEX";
/// Where the worker keeps the query's state (`kafka`: the compacted topic
/// `tickflow-<query>-state`, written in the output's transaction).
pub const STATE_STORE_ENV: &str = "TICKFLOW_STATE_STORE";

/// Which worker of how many a pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlot {
    pub index: i32,
    pub workers: i32,
}

impl WorkerSlot {
    /// Whether this slot belongs to a set of `workers` workers.
    pub fn is_in(self, workers: i32) -> bool {
        self.workers == workers && (0..workers).contains(&self.index)
    }
}

/// Name of worker `index`'s Deployment.
pub fn worker_deployment_name(query: &str, index: i32) -> String {
    format!("{query}-w{index}")
}

/// Label selector of every worker Deployment (and pod) of a query with
/// parallelism: the query's pods that carry a worker index.
pub fn worker_selector_string(query: &str) -> String {
    format!(
        "{},{WORKER_INDEX_LABEL}",
        selector_string(QUERY_COMPONENT, query)
    )
}

/// The slot a pod (or pod template) was started in, read from its worker
/// container's environment: the number of workers decides which partitions
/// it owns, so that, not a label, is what a rescale compares. None: a
/// classic worker (or one whose env was edited by hand).
pub fn worker_slot(pod: &PodSpec) -> Option<WorkerSlot> {
    let c = pod.containers.first()?;
    let var = |name: &str| -> Option<i32> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)?
            .value
            .as_deref()?
            .parse()
            .ok()
    };
    Some(WorkerSlot {
        index: var(WORKER_INDEX_ENV)?,
        workers: var(WORKERS_ENV)?,
    })
}

/// Whether `q` is the controller of the object with `meta` (its
/// controller owner reference carries the query's uid). A rescale scales
/// and deletes only such Deployments: labels can be copied by anyone.
pub fn controlled_by(q: &StreamQuery, meta: &ObjectMeta) -> bool {
    let Some(uid) = q.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Names of the worker Deployments the query would create that are taken
/// by Deployments it does not control (`live`: the namespace's Deployments
/// with the query's worker labels).
pub fn worker_names_taken<'a>(
    q: &StreamQuery,
    workers: i32,
    live: &'a [Deployment],
) -> Vec<&'a str> {
    let name = q.name_any();
    let wanted: Vec<String> = (0..workers)
        .map(|i| worker_deployment_name(&name, i))
        .collect();
    live.iter()
        .filter(|d| !controlled_by(q, &d.metadata))
        .filter_map(|d| d.metadata.name.as_deref())
        .filter(|n| wanted.iter().any(|w| w == n))
        .collect()
}

/// The slot of a Deployment's pod template.
pub fn deployment_slot(d: &Deployment) -> Option<WorkerSlot> {
    worker_slot(d.spec.as_ref()?.template.spec.as_ref()?)
}

fn query_config_map(q: &StreamQuery, sql: &str, owner: &OwnerReference) -> ConfigMap {
    let name = q.name_any();
    ConfigMap {
        metadata: meta(
            config_map_name(&name),
            q.namespace(),
            &labels(QUERY_COMPONENT, &name),
            Some(owner.clone()),
        ),
        data: Some(BTreeMap::from([(SQL_KEY.into(), sql.into())])),
        ..ConfigMap::default()
    }
}

fn query_replicas(q: &StreamQuery) -> i32 {
    match q.spec.state {
        RunState::Running => 1,
        RunState::Suspended => 0,
    }
}

/// The SQL is in a ConfigMap, so it is not in the pod template: hash it in.
fn query_spec_hash(q: &StreamQuery, sql: &str, container: &Container) -> String {
    hash_hex(&[
        sql,
        &serde_json::to_string(container).expect("serializable"),
        q.spec.restart_nonce.as_deref().unwrap_or(""),
    ])
}

/// The worker container of a query and the pod's volumes. `slot` None: the
/// classic worker, checkpoints on the PVC. `slot` Some: one worker of a
/// parallel query, whose state is in Kafka; its `--checkpoint-dir` is an
/// emptyDir (the root filesystem is read-only and the worker still wants a
/// writable directory), bounded by `checkpoint.storageSize`.
fn query_worker(
    q: &StreamQuery,
    sql: &str,
    checked: &CheckedQuery,
    defaults: &Defaults,
    slot: Option<WorkerSlot>,
) -> (Container, Vec<Volume>) {
    let name = q.name_any();
    let ns = q.namespace();
    let spec = &q.spec;
    let state_hash = query_state_hash(q, sql);
    let checkpoint_dir = match spec.upgrade_mode {
        UpgradeMode::LastState => CHECKPOINT_DIR.to_string(),
        UpgradeMode::Stateless => format!("{CHECKPOINT_DIR}/rev-{state_hash}"),
    };
    let mut args: Vec<String> = vec![
        "query".into(),
        "--sql".into(),
        format!("{SQL_DIR}/{SQL_KEY}"),
        "--checkpoint-dir".into(),
        checkpoint_dir,
        "--name".into(),
        // Consumer group and transactional id: unique per namespace and name
        // (namespaces cannot contain dots, so `a.b-c` and `a-b.c` differ).
        // Workers of one query share it; each derives its own
        // transactional id from its index.
        format!("{}.{name}", ns.clone().unwrap_or_default()),
    ];
    for (table, topic) in &checked.inputs {
        args.push("--input".into());
        args.push(format!("{table}=kafka:{topic}"));
    }
    for (stream, output) in &checked.outputs {
        args.push("--output".into());
        args.push(output.binding(stream));
    }
    let mut secrets = SecretFiles::default();
    let mut envs = kafka_env(spec.kafka.as_ref(), defaults, &mut secrets);
    envs.extend(postgres_env(spec.postgres.as_ref(), &mut secrets));
    let SecretFiles {
        mut volumes,
        mut mounts,
    } = secrets;
    envs.extend([
        env("TICKFLOW_HTTP_ADDR", format!("0.0.0.0:{WORKER_PORT}")),
        env("TICKFLOW_LOG_FORMAT", "json"),
        env(
            "TICKFLOW_CHECKPOINT_INTERVAL",
            spec.checkpoint.interval.clone(),
        ),
        env("TICKFLOW_ALLOWED_LATENESS", spec.allowed_lateness.clone()),
        env("TICKFLOW_INPUT_FORMAT", checked.input_format.as_str()),
        env("TICKFLOW_OUTPUT_FORMAT", spec.output_format.as_str()),
        env(
            "TICKFLOW_START_FROM",
            match spec.start_from {
                tickflow_crds::StartFrom::Earliest => "earliest",
                tickflow_crds::StartFrom::Latest => "latest",
            },
        ),
        env(
            "TICKFLOW_ON_OFFSET_OUT_OF_RANGE",
            spec.on_offset_out_of_range.as_str(),
        ),
    ]);
    if let Some(t) = &spec.dead_letter_topic {
        envs.push(env("TICKFLOW_DEAD_LETTER_TOPIC", t.clone()));
    }
    if spec.upgrade_mode == UpgradeMode::Stateless {
        // Each revision starts in an empty directory although the consumer
        // group holds the previous revision's offsets: that is the point of
        // a stateless upgrade, not a lost checkpoint (which the worker
        // refuses otherwise).
        envs.push(env("TICKFLOW_START_FRESH_IF_NO_CHECKPOINT", "true"));
    }
    // Appended last, so that a classic worker's container (and with it its
    // spec hash) is exactly what it was before parallelism existed.
    if let Some(slot) = slot {
        envs.extend([
            env(WORKERS_ENV, slot.workers.to_string()),
            env(WORKER_INDEX_ENV, slot.index.to_string()),
            env(STATE_STORE_ENV, "kafka"),
        ]);
    }
    let checkpoints = match slot {
        None => Volume {
            name: "checkpoints".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(&name),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        // Scratch only: nothing in it is needed after the pod is gone.
        Some(_) => Volume {
            name: "checkpoints".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(spec.checkpoint.storage_size.clone())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    volumes.extend([
        Volume {
            name: "sql".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        checkpoints,
        // The root filesystem is read-only; librdkafka and the runtime may need /tmp.
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]);
    mounts.extend([
        volume_mount("sql", SQL_DIR, true),
        volume_mount("checkpoints", CHECKPOINT_DIR, false),
        volume_mount("tmp", "/tmp", false),
    ]);
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.worker_image.clone());
    let container = hardened_container("worker", image, args, envs, mounts, spec.resources.clone());
    (container, volumes)
}

/// The simulator's Deployment and Service.
pub fn market_producer(p: &MarketProducer, defaults: &Defaults) -> MarketProducerObjects {
    let name = p.name_any();
    let ns = p.namespace();
    let owner = p
        .controller_owner_ref(&())
        .expect("object from the API server");
    let spec = &p.spec;
    let mut args: Vec<String> = vec![
        "produce".into(),
        "--continuous".into(),
        "--realtime".into(),
        "--speed".into(),
        spec.speed.to_string(),
        "--rate".into(),
        spec.rate.to_string(),
        "--seed".into(),
        spec.seed.to_string(),
        "--format".into(),
        match spec.format {
            Format::Avro => "avro".into(),
            Format::Json => "json".into(),
        },
        "--ticks-topic".into(),
        spec.topics.market_ticks.clone(),
        "--orders-topic".into(),
        spec.topics.order_events.clone(),
        "--books-topic".into(),
        spec.topics.book_updates.clone(),
        "--partitions".into(),
        spec.partitions.to_string(),
    ];
    if !spec.symbols.is_empty() {
        args.push("--symbols".into());
        args.push(spec.symbols.join(","));
    }
    if spec.burst {
        args.push("--burst".into());
    }
    if let Some(j) = &spec.jitter {
        args.push("--jitter".into());
        args.push(j.clone());
    }
    let mut secrets = SecretFiles::default();
    let mut envs = kafka_env(spec.kafka.as_ref(), defaults, &mut secrets);
    let SecretFiles {
        mut volumes,
        mut mounts,
    } = secrets;
    envs.extend([
        env("TICKFLOW_HTTP_ADDR", format!("0.0.0.0:{WORKER_PORT}")),
        env("TICKFLOW_LOG_FORMAT", "json"),
    ]);
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(volume_mount("tmp", "/tmp", false));
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.worker_image.clone());
    let container = hardened_container(
        "producer",
        image,
        args,
        envs,
        mounts,
        spec.resources.clone(),
    );
    let spec_hash = hash_hex(&[
        &serde_json::to_string(&container).expect("serializable"),
        spec.restart_nonce.as_deref().unwrap_or(""),
    ]);
    let replicas = match spec.state {
        RunState::Running => 1,
        RunState::Suspended => 0,
    };
    MarketProducerObjects {
        deployment: deployment(
            &name,
            ns.clone(),
            PRODUCER_COMPONENT,
            owner.clone(),
            replicas,
            &spec_hash,
            container,
            volumes,
        ),
        service: service(&name, ns, PRODUCER_COMPONENT, owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql_check;

    /// The spec hash a Deployment's pod template carries.
    fn template_hash(d: &Deployment) -> String {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[SPEC_HASH_ANNOTATION]
            .clone()
    }

    fn query(yaml: &str) -> StreamQuery {
        let mut q: StreamQuery = serde_yaml::from_str(yaml).unwrap();
        q.metadata.uid = Some("uid-1".into());
        q.metadata.namespace = Some("ns".into());
        q
    }

    fn defaults() -> Defaults {
        Defaults {
            worker_image: "tickflow-worker:test".into(),
            kafka_brokers: "kafka:9093".into(),
            schema_registry_url: "http://registry:8081".into(),
            allowed_image_repositories: vec![],
            checkpoint_access_mode: AccessMode::ReadWriteOncePod,
        }
    }

    #[test]
    fn image_repositories_are_parsed_and_allow_listed() {
        assert_eq!(image_repository("a/b:1.0"), "a/b");
        assert_eq!(image_repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(image_repository("reg:5000/a/b:1@sha256:00"), "reg:5000/a/b");
        assert_eq!(image_repository("a@sha256:00"), "a");
        let mut d = defaults();
        // Default list: the operator's own worker repository only.
        assert!(check_image(None, &d).is_ok());
        assert!(check_image(Some("tickflow-worker:other-tag"), &d).is_ok());
        let e = check_image(Some("evil.example.com/miner:latest"), &d).unwrap_err();
        assert!(e.contains("evil.example.com/miner"), "{e}");
        // A tag cannot smuggle in another repository.
        assert!(check_image(Some("tickflow-worker-evil:1"), &d).is_err());
        d.allowed_image_repositories = vec!["registry.corp/tickflow/*".into(), "x/y".into()];
        assert!(check_image(Some("registry.corp/tickflow/worker:2"), &d).is_ok());
        assert!(check_image(Some("registry.corp/tickflowx/worker:2"), &d).is_err());
        assert!(check_image(Some("x/y@sha256:00"), &d).is_ok());
        assert!(check_image(Some("x/yz"), &d).is_err());
        // An explicit list replaces the default one.
        assert!(check_image(Some("tickflow-worker:test"), &d).is_err());
    }

    #[test]
    fn pvc_access_mode_defaults_and_existing_pvcs_keep_theirs() {
        let mut q = query(OHLC);
        let modes = |o: &PersistentVolumeClaim| o.spec.as_ref().unwrap().access_modes.clone();
        assert_eq!(
            modes(&objects(&q).pvc),
            Some(vec!["ReadWriteOncePod".into()])
        );
        let mut live = objects(&q).pvc;
        live.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteOnce".into()]);
        let mut pvc = objects(&q).pvc;
        keep_live_access_modes(&q, &mut pvc, Some(&live));
        assert_eq!(modes(&pvc), Some(vec!["ReadWriteOnce".into()]));
        q.spec.checkpoint.access_mode = Some(AccessMode::ReadWriteOnce);
        assert_eq!(modes(&objects(&q).pvc), Some(vec!["ReadWriteOnce".into()]));
    }

    #[test]
    fn pvc_ownership_follows_retain_on_delete() {
        let mut q = query(OHLC);
        let owned = objects(&q).pvc;
        assert!(pvc_ownership_patch(&q, &owned).is_none());
        q.spec.checkpoint.retain_on_delete = true;
        let p = pvc_ownership_patch(&q, &owned).unwrap();
        assert_eq!(
            p["metadata"]["ownerReferences"][0],
            serde_json::json!({"$patch": "delete", "uid": "uid-1"})
        );
        let free = objects(&q).pvc;
        assert!(pvc_ownership_patch(&q, &free).is_none());
        q.spec.checkpoint.retain_on_delete = false;
        let p = pvc_ownership_patch(&q, &free).unwrap();
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn config_map_references_are_by_namespace_and_name() {
        let mut q = query(OHLC);
        assert!(!references_config_map(&q, "ns", "queries"));
        q.spec.sql_config_map = Some(tickflow_crds::KeyRef {
            name: "queries".into(),
            key: "a.sql".into(),
        });
        assert!(references_config_map(&q, "ns", "queries"));
        assert!(!references_config_map(&q, "other", "queries"));
        assert!(!references_config_map(&q, "ns", "queries2"));
    }

    const OHLC: &str = r#"
apiVersion: tickflow.io/v1alpha1
kind: StreamQuery
metadata: {name: ohlc}
spec:
  sql: "CREATE STREAM ohlc_5s AS SELECT symbol, MAX(price) AS high FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);"
"#;

    fn objects(q: &StreamQuery) -> StreamQueryObjects {
        let sql = q.spec.sql.clone().unwrap();
        let checked = sql_check::check(&q.spec, &sql).unwrap();
        stream_query(q, &sql, &checked, &defaults())
    }

    #[test]
    fn query_objects_are_owned_hardened_and_wired() {
        let q = query(OHLC);
        let o = objects(&q);
        for m in [
            &o.config_map.metadata,
            &o.pvc.metadata,
            &o.deployment.metadata,
            &o.service.metadata,
        ] {
            let owners = m.owner_references.as_ref().expect("owned");
            assert_eq!(owners[0].kind, "StreamQuery");
            assert_eq!(owners[0].controller, Some(true));
        }
        let d = o.deployment.spec.unwrap();
        assert_eq!(d.replicas, Some(1));
        assert_eq!(d.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let pod = d.template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--input market_ticks=kafka:market-ticks"),
            "{args}"
        );
        assert!(args.contains("--output ohlc_5s=kafka:ohlc-5s"), "{args}");
        assert!(args.contains("--name ns.ohlc"), "{args}");
        let envs: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(envs["KAFKA_BROKERS"], "kafka:9093");
        assert_eq!(envs["SCHEMA_REGISTRY_URL"], "http://registry:8081");
        assert_eq!(envs["TICKFLOW_CHECKPOINT_INTERVAL"], "10s");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(o.config_map.data.unwrap()[SQL_KEY], q.spec.sql.unwrap());
    }

    #[test]
    fn suspend_scales_to_zero_and_nonce_rolls() {
        let q = query(OHLC);
        let base = objects(&q);
        let mut s = q.clone();
        s.spec.state = RunState::Suspended;
        assert_eq!(objects(&s).deployment.spec.unwrap().replicas, Some(0));
        let hash = |o: &StreamQueryObjects| template_hash(&o.deployment);
        // Suspending does not change the pod template (no needless new ReplicaSet).
        assert_eq!(hash(&base), hash(&objects(&s)));
        let mut n = q.clone();
        n.spec.restart_nonce = Some("1".into());
        assert_ne!(hash(&base), hash(&objects(&n)));
    }

    #[test]
    fn retained_pvc_has_no_owner_and_stateless_moves_checkpoints_per_revision() {
        let mut q = query(OHLC);
        q.spec.checkpoint.retain_on_delete = true;
        assert!(objects(&q).pvc.metadata.owner_references.is_none());
        let dir = |q: &StreamQuery| {
            let o = objects(q);
            let args = o.deployment.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap();
            args[args.iter().position(|a| a == "--checkpoint-dir").unwrap() + 1].clone()
        };
        assert_eq!(dir(&q), CHECKPOINT_DIR);
        let start_fresh = |q: &StreamQuery| {
            let o = objects(q);
            o.deployment.spec.unwrap().template.spec.unwrap().containers[0]
                .env
                .clone()
                .unwrap()
                .iter()
                .any(|e| {
                    e.name == "TICKFLOW_START_FRESH_IF_NO_CHECKPOINT"
                        && e.value.as_deref() == Some("true")
                })
        };
        assert!(!start_fresh(&q), "last-state never starts over by itself");
        q.spec.upgrade_mode = UpgradeMode::Stateless;
        assert!(start_fresh(&q), "each stateless revision starts empty");
        let first = dir(&q);
        assert!(first.starts_with(&format!("{CHECKPOINT_DIR}/rev-")));
        q.spec.restart_nonce = Some("again".into());
        assert_eq!(dir(&q), first, "a restart keeps the revision's state");
        q.spec.sql = Some(q.spec.sql.unwrap().replace("5' SECOND", "10' SECOND"));
        assert_ne!(dir(&q), first, "a new query revision starts empty");
    }

    #[test]
    fn secrets_are_mounted_as_files_not_env_values() {
        let q = query(
            r#"
apiVersion: tickflow.io/v1alpha1
kind: StreamQuery
metadata: {name: secure}
spec:
  sql: "CREATE STREAM x AS SELECT symbol FROM market_ticks;"
  kafka:
    bootstrapServers: "b:9092"
    security: {protocol: sasl_ssl, saslMechanism: scram-sha-512, username: alice,
               passwordSecretRef: {name: kafka-creds, key: password}}
"#,
        );
        let o = objects(&q);
        let pod = o.deployment.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let envs = c.env.as_ref().unwrap();
        assert!(envs.iter().all(|e| e.name != "KAFKA_SASL_PASSWORD"));
        assert!(envs.iter().any(|e| e.name == "KAFKA_SASL_PASSWORD_FILE"));
        assert!(
            envs.iter()
                .any(|e| e.name == "KAFKA_BROKERS" && e.value.as_deref() == Some("b:9092"))
        );
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "kafka-sasl")
            .unwrap();
        assert_eq!(
            vol.secret.unwrap().secret_name.as_deref(),
            Some("kafka-creds")
        );
    }

    #[test]
    fn postgres_tls_goes_to_the_worker_under_libpq_names_with_files_mounted() {
        let pod_env = |tls: &str| {
            let q = query(&format!(
                r#"
apiVersion: tickflow.io/v1alpha1
kind: StreamQuery
metadata: {{name: pg}}
spec:
  sql: "CREATE STREAM x AS SELECT symbol FROM market_ticks;"
  sinks: [{{stream: x, table: x}}]
  postgres:
    url: "postgres://u@db:5432/d"
{tls}
"#
            ));
            let pod = objects(&q).deployment.spec.unwrap().template.spec.unwrap();
            let c = pod.containers[0].clone();
            let env: BTreeMap<String, String> = c
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.name.starts_with("PGSSL"))
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect();
            let secret_of = move |path: &str| {
                let mount = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
                let v = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)?;
                let s = v.secret.as_ref()?;
                Some(format!(
                    "{}/{}",
                    s.secret_name.as_deref()?,
                    s.items.as_ref()?[0].key
                ))
            };
            (env, secret_of)
        };
        let (env, _) = pod_env("");
        assert!(
            env.is_empty(),
            "libpq's default (prefer) is the worker's: {env:?}"
        );
        let (env, _) = pod_env("    sslMode: verify-full");
        assert_eq!(env["PGSSLMODE"], "verify-full");
        assert_eq!(
            env["PGSSLROOTCERT"], "system",
            "no CA given: the system's roots"
        );
        let (env, secret_of) = pod_env(
            "    sslMode: verify-ca\n    caSecretRef: {name: db-ca, key: ca.crt}\n    clientCertSecretRef: {name: db-client, key: tls.crt}\n    clientKeySecretRef: {name: db-client, key: tls.key}",
        );
        assert_eq!(env["PGSSLMODE"], "verify-ca");
        assert_eq!(secret_of(&env["PGSSLROOTCERT"]).unwrap(), "db-ca/ca.crt");
        assert_eq!(secret_of(&env["PGSSLCERT"]).unwrap(), "db-client/tls.crt");
        assert_eq!(secret_of(&env["PGSSLKEY"]).unwrap(), "db-client/tls.key");
    }

    #[test]
    fn registry_credentials_and_ca_are_mounted_files_and_the_out_of_range_policy_is_passed_on() {
        let q = query(
            r#"
apiVersion: tickflow.io/v1alpha1
kind: StreamQuery
metadata: {name: reg}
spec:
  sql: "CREATE STREAM x AS SELECT symbol FROM market_ticks;"
  onOffsetOutOfRange: fail
  kafka:
    schemaRegistryUrl: "https://registry:8081"
    schemaRegistrySecurity:
      username: bob
      passwordSecretRef: {name: reg-creds, key: pw}
      caSecretRef: {name: reg-ca, key: ca.pem}
"#,
        );
        let pod = objects(&q).deployment.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let env = |name: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(env("SCHEMA_REGISTRY_URL").unwrap(), "https://registry:8081");
        assert_eq!(env("SCHEMA_REGISTRY_USERNAME").unwrap(), "bob");
        assert_eq!(env("SCHEMA_REGISTRY_PASSWORD"), None, "never a value");
        assert_eq!(env("TICKFLOW_ON_OFFSET_OUT_OF_RANGE").unwrap(), "fail");
        let password = env("SCHEMA_REGISTRY_PASSWORD_FILE").unwrap();
        let ca = env("SCHEMA_REGISTRY_CA_LOCATION").unwrap();
        let volumes = pod.volumes.unwrap();
        for (volume, secret, key, file) in [
            ("registry-auth", "reg-creds", "pw", &password),
            ("registry-ca", "reg-ca", "ca.pem", &ca),
        ] {
            let v = volumes.iter().find(|v| v.name == volume).unwrap();
            let source = v.secret.as_ref().unwrap();
            assert_eq!(source.secret_name.as_deref(), Some(secret));
            let item = &source.items.as_ref().unwrap()[0];
            assert_eq!(item.key, key);
            let mount = c
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.name == volume)
                .unwrap();
            assert_eq!(mount.read_only, Some(true));
            assert_eq!(*file, format!("{}/{}", mount.mount_path, item.path));
        }
        // The default policy is passed on too (the worker's own default).
        let pod = objects(&query(OHLC))
            .deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(pod.containers[0].env.as_ref().unwrap().iter().any(|e| {
            e.name == "TICKFLOW_ON_OFFSET_OUT_OF_RANGE" && e.value.as_deref() == Some("earliest")
        }));
    }

    #[test]
    fn kafka_settings_are_values_the_worker_cli_accepts() {
        use clap::ValueEnum;
        use tickflow_crds::{SaslMechanism, SecurityProtocol};
        for protocol in [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ] {
            for mechanism in [
                SaslMechanism::Plain,
                SaslMechanism::ScramSha256,
                SaslMechanism::ScramSha512,
            ] {
                let mut q = query(OHLC);
                q.spec.kafka = Some(KafkaConnection {
                    security: Some(tickflow_crds::KafkaSecurity {
                        protocol,
                        sasl_mechanism: Some(mechanism),
                        username: Some("u".into()),
                        password_secret_ref: Some(tickflow_crds::KeyRef {
                            name: "s".into(),
                            key: "k".into(),
                        }),
                        ca_secret_ref: None,
                    }),
                    ..KafkaConnection::default()
                });
                let pod = objects(&q).deployment.spec.unwrap().template.spec.unwrap();
                let env = |name: &str| {
                    pod.containers[0]
                        .env
                        .as_ref()
                        .unwrap()
                        .iter()
                        .find(|e| e.name == name)
                        .and_then(|e| e.value.clone())
                        .unwrap()
                };
                let p = env("KAFKA_SECURITY_PROTOCOL");
                assert!(
                    tickflow_crds::kafka::SecurityProtocol::from_str(&p, false).is_ok(),
                    "{p}"
                );
                let m = env("KAFKA_SASL_MECHANISM");
                assert!(
                    tickflow_crds::kafka::SaslMechanism::from_str(&m, false).is_ok(),
                    "{m}"
                );
            }
        }
    }

    fn parallel(q: &StreamQuery, workers: i32) -> ParallelQueryObjects {
        let sql = q.spec.sql.clone().unwrap();
        let checked = sql_check::check(&q.spec, &sql).unwrap();
        parallel_stream_query(q, &sql, &checked, &defaults(), workers)
    }

    fn pod_spec(d: &Deployment) -> PodSpec {
        d.spec.clone().unwrap().template.spec.unwrap()
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, String> {
        pod_spec(d).containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn only_deployments_the_query_controls_are_its_workers() {
        let mut q = query(OHLC);
        q.spec.parallelism = Some(3);
        let ours = parallel(&q, 3).deployments;
        assert!(ours.iter().all(|d| controlled_by(&q, &d.metadata)));
        assert!(worker_names_taken(&q, 3, &ours).is_empty());

        // Same name and labels, but made by someone else (no owner), or
        // owned by another object, or only referencing the query.
        let mut foreign = ours[1].clone();
        foreign.metadata.owner_references = None;
        let mut other_owner = ours[2].clone();
        other_owner.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-2".into();
        let mut not_controller = ours[0].clone();
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        for d in [&foreign, &other_owner, &not_controller] {
            assert!(!controlled_by(&q, &d.metadata), "{:?}", d.metadata.name);
        }
        let live = [foreign, other_owner, not_controller];
        assert_eq!(
            worker_names_taken(&q, 3, &live),
            ["ohlc-w1", "ohlc-w2", "ohlc-w0"]
        );
        // A foreign Deployment beyond the new set takes no worker's name:
        // it is left alone, neither refused nor touched.
        assert_eq!(worker_names_taken(&q, 1, &live), ["ohlc-w0"]);
    }

    #[test]
    fn parallel_workers_are_the_classic_worker_with_a_slot_and_no_pvc() {
        let mut q = query(OHLC);
        q.spec.parallelism = Some(3);
        let p = parallel(&q, 3);
        let classic = objects(&q).deployment;
        assert_eq!(
            deployment_slot(&classic),
            None,
            "a classic worker has no slot"
        );
        assert_eq!(p.deployments.len(), 3);
        let mut hashes = std::collections::BTreeSet::new();
        for (i, d) in p.deployments.iter().enumerate() {
            let i = i as i32;
            assert_eq!(
                d.metadata.name.as_deref(),
                Some(format!("ohlc-w{i}").as_str())
            );
            let owners = d.metadata.owner_references.as_ref().expect("owned");
            assert_eq!(owners[0].kind, "StreamQuery");
            assert_eq!(owners[0].controller, Some(true));
            let labels = d.metadata.labels.clone().unwrap();
            assert_eq!(labels["tickflow.io/instance"], "ohlc");
            assert_eq!(labels[WORKER_INDEX_LABEL], i.to_string());
            let spec = d.spec.clone().unwrap();
            assert_eq!(spec.replicas, Some(1));
            assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
            let selector = spec.selector.match_labels.unwrap();
            assert_eq!(selector[WORKER_INDEX_LABEL], i.to_string());
            let template = spec.template.metadata.unwrap();
            let pod_labels = template.labels.unwrap();
            for (k, v) in &selector {
                assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
            }
            hashes.insert(template.annotations.unwrap()[SPEC_HASH_ANNOTATION].clone());
            let env = env_of(d);
            assert_eq!(env[WORKERS_ENV], "3");
            assert_eq!(env[WORKER_INDEX_ENV], i.to_string());
            assert_eq!(env[STATE_STORE_ENV], "kafka");
            assert_eq!(
                deployment_slot(d),
                Some(WorkerSlot {
                    index: i,
                    workers: 3
                })
            );
            // No PVC: the checkpoint directory is scratch space.
            let pod = pod_spec(d);
            let volumes = pod.volumes.clone().unwrap();
            assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()));
            let scratch = volumes.iter().find(|v| v.name == "checkpoints").unwrap();
            assert_eq!(
                scratch.empty_dir.as_ref().unwrap().size_limit,
                Some(Quantity(q.spec.checkpoint.storage_size.clone()))
            );
            // Everything else is the classic worker: args, probes,
            // security, mounts; the slot is appended to its env.
            let mut c = pod.containers[0].clone();
            let classic_c = pod_spec(&classic).containers[0].clone();
            let env = c.env.as_mut().unwrap();
            let appended = env.split_off(env.len() - 3);
            assert_eq!(
                appended.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
                [WORKERS_ENV, WORKER_INDEX_ENV, STATE_STORE_ENV]
            );
            assert_eq!(c, classic_c);
            assert_eq!(pod.security_context, pod_spec(&classic).security_context);
        }
        assert_eq!(hashes.len(), 3, "each worker has its own template");
        // One Service over every worker's pods.
        let svc = p.service.spec.unwrap().selector.unwrap();
        assert_eq!(svc, selector(QUERY_COMPONENT, "ohlc"));
        assert_eq!(p.config_map.data, objects(&q).config_map.data);
        // Suspended: every worker at zero.
        q.spec.state = RunState::Suspended;
        assert!(
            parallel(&q, 3)
                .deployments
                .iter()
                .all(|d| d.spec.as_ref().unwrap().replicas == Some(0))
        );
    }

    #[test]
    fn a_new_number_of_workers_changes_every_template_and_slots_say_which_set() {
        let q = query(OHLC);
        let hash = template_hash;
        let one = parallel(&q, 1);
        let three = parallel(&q, 3);
        // Worker 0 owns other partitions with 3 workers than with 1.
        assert_ne!(hash(&one.deployments[0]), hash(&three.deployments[0]));
        let s = deployment_slot(&one.deployments[0]).unwrap();
        assert!(s.is_in(1) && !s.is_in(3));
        assert!(
            WorkerSlot {
                index: 2,
                workers: 3
            }
            .is_in(3)
        );
        assert!(
            !WorkerSlot {
                index: 3,
                workers: 3
            }
            .is_in(3)
        );
        // The schema's bounds, again.
        assert_eq!(parallel(&q, 0).deployments.len(), 1);
        assert_eq!(
            parallel(&q, 1000).deployments.len(),
            MAX_PARALLELISM as usize
        );
        assert_eq!(
            worker_selector_string("ohlc"),
            "app.kubernetes.io/component=stream-query,tickflow.io/instance=ohlc,tickflow.io/worker-index"
        );
    }

    #[test]
    fn producer_args_follow_the_spec() {
        let mut p: MarketProducer = serde_yaml::from_str(
            r#"
apiVersion: tickflow.io/v1alpha1
kind: MarketProducer
metadata: {name: sim, namespace: ns, uid: u}
spec: {symbols: [AAPL, MSFT], rate: 500, burst: true, seed: 7}
"#,
        )
        .unwrap();
        let o = market_producer(&p, &defaults());
        let args = o.deployment.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(
            args.starts_with("produce --continuous --realtime"),
            "{args}"
        );
        assert!(args.contains("--rate 500 --seed 7"), "{args}");
        assert!(args.contains("--symbols AAPL,MSFT --burst"), "{args}");
        p.spec.state = RunState::Suspended;
        assert_eq!(
            market_producer(&p, &defaults())
                .deployment
                .spec
                .unwrap()
                .replicas,
            Some(0)
        );
    }
}
