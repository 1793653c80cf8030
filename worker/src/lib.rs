//! tickflow worker: the data path of a market-analytics pipeline.
//!
//! Modules follow the data path: [`simulator`] → [`codec`] (Avro/JSON ↔ Arrow) →
//! [`source`] (file, Kafka, simulator) → [`engine`] (the `tickflow-engine`
//! crate: catalog, SQL planning, streaming operators, state) → [`sink`] →
//! [`checkpoint`]. The [`runner`] is the one loop that drives them (restore,
//! poll, engine, route, checkpoint, commit); [`app`] wires the pieces into
//! the `produce`, `query` and `demo` commands. See docs/architecture.md.

pub mod app;
pub mod checkpoint;
pub mod clock;
pub mod codec;
pub use tickflow_engine as engine;
pub mod kafka;
pub mod memory;
pub mod queries;
pub mod runner;
pub mod runtime;
pub mod simulator;
pub mod sink;
pub mod source;
