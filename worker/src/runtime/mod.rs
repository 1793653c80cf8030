//! Runtime reporting of a worker: status document, Prometheus metrics and
//! the HTTP endpoint that serves them.

pub mod http;
pub mod status;

pub use status::{CheckpointStatus, Status, StatusHandle, WorkerState};
