//! Runtime reporting of a worker: status document, Prometheus metrics, the
//! HTTP endpoint that serves them, and logging set-up.

pub mod http;
pub mod status;
pub use tickflow_crds::telemetry;

pub use status::{CheckpointStatus, Status, StatusHandle, WorkerState};
