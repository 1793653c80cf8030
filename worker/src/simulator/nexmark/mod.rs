//! Nexmark event generator: the online-auction streams of the Nexmark
//! benchmark (`person`, `auction`, `bid`), following the generator of
//! nexmark-flink (`NexmarkGenerator`, `GeneratorConfig` and the model
//! generators), itself Beam's with bid channels and URLs added.
//!
//! # Model
//!
//! - **Mix.** Event ids cycle through `person_proportion + auction_proportion
//!   + bid_proportion` (1 + 3 + 46 = 50) ids: people first, then auctions,
//!   then bids ([`EventKind::of`]).
//! - **Ids.** The `k`-th person (auction) of the run has id `1000 + k`; sellers
//!   and bidders are recent people and bids go to recent auctions, sometimes
//!   a few ids ahead of the newest (see `ids` for the exact bounds).
//! - **Hot keys.** Most bids go to one hot auction, most bidders and sellers
//!   are one hot person (`hot_*_ratio`: probability `1 - 1/ratio`).
//! - **Values.** Prices log-uniform from $1 to $1M in cents, reserve above
//!   the initial bid, auctions open for about the time `num_in_flight_auctions`
//!   auctions take to arrive, categories 10 to 14, names, cities and states
//!   from the spec's lists, `extra` padding each record to the configured
//!   average size, a channel and URL per bid (see `strings`).
//! - **Time.** Event number `n` happens at `base_time_ms + n / rate`
//!   (truncated to the millisecond); `out_of_order_group_size` shuffles
//!   events within groups (see `config`).
//!
//! # Determinism
//!
//! The output is a pure function of the [`NexmarkConfig`]: each event is
//! built from its own ChaCha8 stream (see `generator`), so any split of a run
//! into batches gives the same concatenated tables, on every platform.
//!
//! # Deviations from nexmark-flink
//!
//! - Random values come from the simulator's ChaCha8 streams, not Java's
//!   `SplittableRandom`: same distributions, different values.
//! - A bidder's id is `1000 + base-0 id`; nexmark-flink adds 1000 twice (a
//!   bug: its bidders are 1000 ids ahead of the people), Beam once.
//! - One generator with a constant rate: no rate shapes or steps, no split
//!   over parallel generators, no wall-clock pacing here (`produce` paces).

mod config;
mod generator;
mod ids;
mod records;
mod strings;

#[cfg(test)]
mod tests;

pub use config::{MAX_EVENTS, NexmarkConfig, NexmarkConfigError};
pub use generator::{NexmarkEvent, NexmarkGenerator, NexmarkRecord};
pub use ids::{
    AUCTION_ID_LEAD, EventKind, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID, HOT_GROUP,
    NUM_CATEGORIES, PERSON_ID_LEAD,
};
pub use records::{
    Auction, Bid, NexmarkOutput, NexmarkTable, Person, auctions_to_batch, bids_to_batch,
    persons_to_batch,
};
pub use strings::{
    CHANNELS_NUMBER, FIRST_NAMES, HOT_CHANNELS, LAST_NAMES, MAX_PRICE, MIN_PRICE, US_CITIES,
    US_STATES,
};
