//! [`NexmarkGenerator`]: Nexmark events one at a time or in batches
//! (nexmark-flink's `NexmarkGenerator` and the `nextPerson`, `nextAuction`
//! and `nextBid` of its model generators).
//!
//! Invariants:
//! - The `n`-th event generated is [`NexmarkGenerator::event_at`]`(n)`, a
//!   pure function of the config and `n`: its event id (`n`, or its place in
//!   the out-of-order shuffle) decides the table and the ids, its event
//!   number the event time, and its fields come from a ChaCha8 stream of its
//!   own (stream = event id). Batching only decides how many events a call
//!   returns, so any split of a run gives the same concatenated tables, and
//!   switching the shuffle on reorders events without changing them.
//! - Like Beam's generator (a `Random` seeded with the event id), unlike
//!   nexmark-flink's (one unseeded `SplittableRandom`): the same seed gives
//!   the same bytes on every platform.

use super::super::rng::SimRng;
use super::config::{MAX_EVENTS, NexmarkConfig, NexmarkConfigError};
use super::ids::{self, EventKind};
use super::records::{Auction, Bid, NexmarkOutput, Person};
use super::strings::{self, Tables};

/// Mixed into the seed so that Nexmark streams never coincide with the
/// market simulator's streams of the same seed.
const SEED_SALT: u64 = 0x6e65_786d_6172_6b00; // "nexmark\0"
/// Streams of the shared tables: above every event id (< 2^62).
const POOL_STREAM: u64 = u64::MAX;
const CHANNEL_STREAM: u64 = u64::MAX - 1;

/// One generated event: its id and its record.
#[derive(Clone, Debug, PartialEq)]
pub struct NexmarkEvent {
    /// The spec's event id: decides the table (see [`EventKind::of`]) and
    /// the person or auction id.
    pub event_id: u64,
    pub record: NexmarkRecord,
}

/// The record of one event.
#[derive(Clone, Debug, PartialEq)]
pub enum NexmarkRecord {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl NexmarkRecord {
    /// Event time, epoch milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Self::Person(p) => p.date_time,
            Self::Auction(a) => a.date_time,
            Self::Bid(b) => b.date_time,
        }
    }
}

/// The Nexmark generator. See the [module docs](self).
pub struct NexmarkGenerator {
    config: NexmarkConfig,
    key: u64,
    tables: Tables,
    /// Events generated so far.
    count: u64,
    /// Events the run has in all.
    limit: u64,
}

impl NexmarkGenerator {
    /// A generator at the start of the run.
    ///
    /// # Panics
    /// If the config is invalid; use [`NexmarkGenerator::try_new`] to get the error.
    pub fn new(config: NexmarkConfig) -> NexmarkGenerator {
        match Self::try_new(config) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(config: NexmarkConfig) -> Result<NexmarkGenerator, NexmarkConfigError> {
        config.validate()?;
        let key = config.seed ^ SEED_SALT;
        Ok(NexmarkGenerator {
            key,
            tables: Tables::new(key, POOL_STREAM, CHANNEL_STREAM),
            count: 0,
            limit: config.events.unwrap_or(MAX_EVENTS),
            config,
        })
    }

    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    /// Events generated so far.
    pub fn events_generated(&self) -> u64 {
        self.count
    }

    /// Events still to come (2^62 in all for an unbounded run).
    pub fn remaining(&self) -> u64 {
        self.limit - self.count
    }

    /// Event time of the latest event number generated (`base_time_ms` before
    /// the first), for pacing. With the out-of-order shuffle an event's own
    /// time may differ by less than one group.
    pub fn event_time_ms(&self) -> i64 {
        self.config
            .timestamp_for_event(self.count.saturating_sub(1))
    }

    /// No event still to come is older than this (the spec's watermark):
    /// the time of the first event number of the next event's group.
    pub fn watermark_ms(&self) -> i64 {
        self.config
            .timestamp_for_event(self.config.watermark_event_number(self.count))
    }

    /// The next event, `None` at the end of a bounded run.
    pub fn next_event(&mut self) -> Option<NexmarkEvent> {
        if self.count >= self.limit {
            return None;
        }
        let e = self.event_at(self.count);
        self.count += 1;
        Some(e)
    }

    /// The next `max_events` events (fewer at the end of the run), split by table.
    pub fn next_batch(&mut self, max_events: usize) -> NexmarkOutput {
        let mut out = NexmarkOutput::default();
        let n = (max_events as u64).min(self.remaining());
        let bids = n * self.config.bid_proportion / self.config.total_proportion();
        out.bids.reserve(bids as usize + 1);
        for _ in 0..n {
            match self.next_event().expect("within the limit").record {
                NexmarkRecord::Person(p) => out.persons.push(p),
                NexmarkRecord::Auction(a) => out.auctions.push(a),
                NexmarkRecord::Bid(b) => out.bids.push(b),
            }
        }
        out
    }

    /// The `count`-th event of the run (from 0), whether or not it has been
    /// generated: what [`NexmarkGenerator::next_event`] returns then.
    pub fn event_at(&self, count: u64) -> NexmarkEvent {
        let event_id = self.config.adjusted_event_number(count);
        let ts = self.config.timestamp_for_event(event_id);
        let mut rng = SimRng::new(self.key, event_id);
        let record = match EventKind::of(&self.config, event_id) {
            EventKind::Person => NexmarkRecord::Person(self.person(event_id, ts, &mut rng)),
            EventKind::Auction => NexmarkRecord::Auction(self.auction(event_id, ts, &mut rng)),
            EventKind::Bid => NexmarkRecord::Bid(self.bid(event_id, ts, &mut rng)),
        };
        NexmarkEvent { event_id, record }
    }

    fn person(&self, event_id: u64, ts: i64, rng: &mut SimRng) -> Person {
        let id = ids::last_base0_person_id(&self.config, event_id) as i64 + ids::FIRST_PERSON_ID;
        let name = strings::next_person_name(rng);
        let email_address = strings::next_email(rng);
        let credit_card = strings::next_credit_card(rng);
        let city = strings::next_us_city(rng);
        let state = strings::next_us_state(rng);
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let extra = self
            .tables
            .next_extra(rng, size, self.config.avg_person_byte_size);
        Person {
            id,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: ts,
            extra,
        }
    }

    fn auction(&self, event_id: u64, ts: i64, rng: &mut SimRng) -> Auction {
        let c = &self.config;
        let id = ids::last_base0_auction_id(c, event_id) + ids::FIRST_AUCTION_ID;
        let seller = if rng.below(c.hot_sellers_ratio) > 0 {
            ids::hot_seller(c, event_id)
        } else {
            ids::next_base0_person_id(c, event_id, rng)
        } as i64
            + ids::FIRST_PERSON_ID;
        let category = ids::FIRST_CATEGORY_ID + rng.below(ids::NUM_CATEGORIES) as i64;
        let initial_bid = strings::next_price(rng);
        let expires = ts + self.auction_length_ms(event_id, ts, rng);
        let item_name = strings::next_string(rng, 20, ' ');
        let description = strings::next_string(rng, 100, ' ');
        let reserve = initial_bid + strings::next_price(rng);
        let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
        let extra = self.tables.next_extra(rng, size, c.avg_auction_byte_size);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: ts,
            expires,
            seller,
            category,
            extra,
        }
    }

    /// How long an auction stays open: uniform in `1 ..= 2h` ms, where `h`
    /// is the event time until `num_in_flight_auctions` more auctions have
    /// come (so about that many are open at any time).
    fn auction_length_ms(&self, event_id: u64, ts: i64, rng: &mut SimRng) -> i64 {
        let c = &self.config;
        let events_for_auctions =
            c.num_in_flight_auctions * c.total_proportion() / c.auction_proportion;
        let future = c.timestamp_for_event(event_id + events_for_auctions);
        let horizon = future - ts;
        1 + rng.below((horizon * 2).max(1) as u64) as i64
    }

    fn bid(&self, event_id: u64, ts: i64, rng: &mut SimRng) -> Bid {
        let c = &self.config;
        let auction = if rng.below(c.hot_auction_ratio) > 0 {
            ids::hot_auction(c, event_id)
        } else {
            ids::next_base0_auction_id(c, event_id, rng)
        } as i64
            + ids::FIRST_AUCTION_ID;
        let bidder = if rng.below(c.hot_bidders_ratio) > 0 {
            ids::hot_bidder(c, event_id)
        } else {
            ids::next_base0_person_id(c, event_id, rng)
        } as i64
            + ids::FIRST_PERSON_ID;
        let price = strings::next_price(rng);
        let (channel, url) = self.tables.next_channel(rng);
        // The spec counts the four numbers only, not channel and url.
        let extra = self
            .tables
            .next_extra(rng, 8 + 8 + 8 + 8, c.avg_bid_byte_size);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: ts,
            extra,
        }
    }
}

impl Iterator for NexmarkGenerator {
    type Item = NexmarkEvent;

    fn next(&mut self) -> Option<NexmarkEvent> {
        self.next_event()
    }
}
