//! Runtime reporting of a worker: status document, Prometheus metrics, the
//! HTTP endpoint that serves them, the live web view, and logging set-up.

pub mod http;
pub mod status;
pub mod web;
pub use tickflow_crds::telemetry;

pub use status::{CheckpointStatus, Status, StatusHandle, WorkerState};
