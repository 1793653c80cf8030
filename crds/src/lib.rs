//! API types of tickflow's custom resources.
//!
//! `MarketProducer` and `StreamQuery` (group `tickflow.io`, version `v1alpha1`)
//! arrive with the operator issue; this crate exists now so the workspace layout
//! matches the product brief and the worker can depend on shared names.

/// API group of every tickflow custom resource.
pub const API_GROUP: &str = "tickflow.io";
/// Served and stored API version.
pub const API_VERSION: &str = "v1alpha1";
