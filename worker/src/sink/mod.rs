//! Sinks: where result rows go.
//!
//! A sink's `commit` makes everything written so far durable and returns a
//! position; a checkpoint records it, and a restore cuts the output back to it,
//! so output written after the last checkpoint is neither lost nor duplicated.

pub mod file;
pub mod kafka;
pub mod memory;
pub mod publisher;
