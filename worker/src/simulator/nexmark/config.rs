//! [`NexmarkConfig`]: everything that determines a Nexmark run, and the
//! spec's event-number arithmetic (`GeneratorConfig` of Beam's and
//! nexmark-flink's generators).
//!
//! Invariants:
//! - Event number `n` (the `n`-th event generated, from 0) has event time
//!   `base_time_ms + ⌊⌊n · 10⁶ / first_event_rate⌋ / 1000⌋` ms
//!   ([`NexmarkConfig::timestamp_for_event`]): non-decreasing in `n`, exactly
//!   `first_event_rate` events per second when the rate divides 10⁶.
//! - With `out_of_order_group_size = g > 1`, the `n`-th event generated is
//!   event number `⌊n/g⌋·g + (n·953 mod g)` instead of `n`: a permutation
//!   within each group of `g` (953 is prime and `g` is no multiple of it), so
//!   ids and times are out of order by less than one group, never across a
//!   group boundary. As in the spec, a `g` that divides 952 (2, 4, 7, 8, 14,
//!   …) leaves every group in order.

use super::super::DEFAULT_START_TIME_MS;

/// The spec's multiplier of the out-of-order permutation (a prime).
const OUT_OF_ORDER_STRIDE: u64 = 953;

/// The most events a run may have: event numbers stay below 2^62, far from
/// the random streams the generator keeps for its own tables.
pub const MAX_EVENTS: u64 = 1 << 62;

/// Everything that determines a Nexmark run. Field names follow
/// `NexmarkConfiguration` of nexmark-flink; the defaults are its defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NexmarkConfig {
    /// The same seed gives the same events.
    pub seed: u64,
    /// Events per second of event time, over all three tables (the spec's
    /// `firstEventRate`; this generator has no rate steps).
    pub first_event_rate: f64,
    /// Events to generate in all; `None`: unbounded.
    pub events: Option<u64>,
    /// Of every `person + auction + bid` consecutive event ids, the first
    /// `person_proportion` are people, the next `auction_proportion`
    /// auctions, the rest bids (1 : 3 : 46 by default).
    pub person_proportion: u64,
    pub auction_proportion: u64,
    pub bid_proportion: u64,
    /// A bid is for the current hot auction with probability `1 - 1/ratio`
    /// (so 2 → one half; 1 → never).
    pub hot_auction_ratio: u64,
    /// An auction's seller is the current hot seller with probability
    /// `1 - 1/ratio`.
    pub hot_sellers_ratio: u64,
    /// A bidder is the current hot bidder with probability `1 - 1/ratio`.
    pub hot_bidders_ratio: u64,
    /// Random sellers and bidders come from the newest this many people
    /// (plus the lead), so activity per person does not thin out over time.
    pub num_active_people: u64,
    /// Random bids go to the newest this many auctions (plus the lead): the
    /// ones likely still open.
    pub num_in_flight_auctions: u64,
    /// Average record sizes in bytes (as the spec counts them: 8 per number,
    /// string lengths); `extra` pads records to them.
    pub avg_person_byte_size: usize,
    pub avg_auction_byte_size: usize,
    pub avg_bid_byte_size: usize,
    /// Event time of event number 0, epoch milliseconds.
    pub base_time_ms: i64,
    /// Events are shuffled within consecutive groups of this many event
    /// numbers (the spec's `outOfOrderGroupSize`); 1: in order.
    pub out_of_order_group_size: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            first_event_rate: 10_000.0,
            events: None,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            avg_person_byte_size: 200,
            avg_auction_byte_size: 500,
            avg_bid_byte_size: 100,
            base_time_ms: DEFAULT_START_TIME_MS,
            out_of_order_group_size: 1,
        }
    }
}

/// A [`NexmarkConfig`] the generator cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid Nexmark config: {0}")]
pub struct NexmarkConfigError(pub String);

impl NexmarkConfig {
    /// Checks that the config describes a runnable generator.
    pub fn validate(&self) -> Result<(), NexmarkConfigError> {
        let err = |m: String| Err(NexmarkConfigError(m));
        if !(self.first_event_rate.is_finite() && self.first_event_rate > 0.0) {
            return err(format!(
                "first_event_rate must be positive, got {}",
                self.first_event_rate
            ));
        }
        // Without people there is no last person id, without auctions no
        // auction length (the spec divides by the auction proportion).
        if self.person_proportion == 0 || self.auction_proportion == 0 {
            return err("person_proportion and auction_proportion must be at least 1".into());
        }
        let total = self
            .person_proportion
            .checked_add(self.auction_proportion)
            .and_then(|t| t.checked_add(self.bid_proportion));
        if total.is_none_or(|t| t > u32::MAX as u64) {
            return err("the proportions must add up to at most 2^32 - 1".into());
        }
        for (name, ratio) in [
            ("hot_auction_ratio", self.hot_auction_ratio),
            ("hot_sellers_ratio", self.hot_sellers_ratio),
            ("hot_bidders_ratio", self.hot_bidders_ratio),
        ] {
            if ratio == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        if self.num_active_people > u32::MAX as u64 || self.num_in_flight_auctions > u32::MAX as u64
        {
            return err("num_active_people and num_in_flight_auctions must be below 2^32".into());
        }
        let g = self.out_of_order_group_size;
        if g == 0 || g.is_multiple_of(OUT_OF_ORDER_STRIDE) || g > MAX_EVENTS {
            return err(format!(
                "out_of_order_group_size must be at least 1, at most 2^62 and no multiple of \
                 {OUT_OF_ORDER_STRIDE} (else the shuffle repeats events), got {g}"
            ));
        }
        if self.events.is_some_and(|n| n > MAX_EVENTS) {
            return err(format!(
                "events must be at most 2^62, got {:?}",
                self.events
            ));
        }
        Ok(())
    }

    /// `person + auction + bid` proportions: the length of one id cycle.
    pub fn total_proportion(&self) -> u64 {
        self.person_proportion + self.auction_proportion + self.bid_proportion
    }

    /// Microseconds of event time between consecutive events.
    pub fn inter_event_delay_us(&self) -> f64 {
        1_000_000.0 / self.first_event_rate
    }

    /// Event time of event number `n`, epoch milliseconds (the spec's
    /// `timestampForEvent`: microseconds truncated, then whole milliseconds).
    pub fn timestamp_for_event(&self, n: u64) -> i64 {
        let us = (n as f64 * self.inter_event_delay_us()) as i64;
        self.base_time_ms.saturating_add(us / 1000)
    }

    /// The event number of the `count`-th event generated (from 0): `count`
    /// itself, or its place in the out-of-order shuffle of its group.
    pub fn adjusted_event_number(&self, count: u64) -> u64 {
        let g = self.out_of_order_group_size;
        // (count · 953) mod g without overflow.
        let offset = ((count % g) as u128 * OUT_OF_ORDER_STRIDE as u128 % g as u128) as u64;
        count / g * g + offset
    }

    /// The smallest event number generated at or after the `count`-th event:
    /// the start of its out-of-order group.
    pub fn watermark_event_number(&self, count: u64) -> u64 {
        count / self.out_of_order_group_size * self.out_of_order_group_size
    }
}
