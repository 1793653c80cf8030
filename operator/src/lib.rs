//! tickflow's Kubernetes operator.
//!
//! Data path: the CRD types (`tickflow-crds`) → [`sql_check`] (the worker's
//! planner) → [`desired`] (objects to apply, pure) → [`controller`]
//! (server-side apply, events) → [`status`] (phase and conditions, pure) with
//! the worker's own figures from [`worker_status`]. A query with
//! parallelism changes its number of workers in two phases that
//! [`rescale`] decides (pure). [`leader`] keeps one active replica; [`http`]
//! serves /metrics, /healthz and /readyz.

pub mod controller;
pub mod desired;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod rescale;
pub mod sql_check;
pub mod status;
pub mod worker_status;
