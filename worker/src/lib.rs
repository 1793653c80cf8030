//! tickflow worker: the data path of a market-analytics pipeline.
//!
//! Modules follow the data path: [`simulator`] → [`codec`] (Avro/JSON ↔ Arrow) →
//! [`source`] (file, memory) → [`engine`] (SQL planning, streaming operators,
//! state) → [`sink`] → [`checkpoint`]. The engine knows nothing about where
//! batches come from; [`app`] wires the pieces into the `produce`, `query` and
//! `demo` commands.

pub mod app;
pub mod checkpoint;
pub mod codec;
pub mod engine;
pub mod kafka;
pub mod runtime;
pub mod simulator;
pub mod sink;
pub mod source;
