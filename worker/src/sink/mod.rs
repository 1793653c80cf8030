//! Sinks: where result rows go, behind the run loop's
//! [`Sink`](crate::runner::Sink) trait.
//!
//! Each sink takes part in the epoch protocol: its pre-commit makes the
//! epoch's output durable or recoverable and says what the checkpoint must
//! hold, its commit makes the output visible with the source positions, and
//! its start repairs whatever a crash between the two left behind, so output
//! is neither lost nor duplicated.
//!
//! - [`epochs`]: the restart decision every exactly-once sink shares.
//! - [`file`]: JSON lines / Avro files of a replay.
//! - [`kafka`]: transactional Kafka topics (exactly-once).
//! - [`memory`]: the latest rows per stream, for the demo's views.
//! - [`pending`]: the records of an open Kafka transaction, as Arrow chunks.
//! - [`postgres`]: PostgreSQL/TimescaleDB tables, exactly-once (one
//!   transaction per epoch with the source positions).
//! - [`publisher`]: the producer's plain (non-transactional) Kafka output.
//! - [`web`]: not a sink of its own: a wrapper that tees a sink's results to
//!   the live web view.

pub mod epochs;
pub mod file;
pub mod kafka;
pub mod memory;
pub mod pending;
pub mod postgres;
pub mod publisher;
pub mod web;
