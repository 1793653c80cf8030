//! Sources: where batches of source rows come from, behind the run loop's
//! [`Source`](crate::runner::Source) trait.
//!
//! Every source has a position it can report and start from again, so a
//! checkpoint can resume it exactly where the checkpointed state left off.
//! Malformed records become [`DeadLetter`](crate::runner::DeadLetter)s,
//! never silent drops.

pub mod file;
pub mod kafka;
pub mod simulator;
