//! The spec's id rules: which table an event id belongs to, the id a new
//! person or auction gets, and how sellers, bidders and auctions are chosen
//! (`lastBase0PersonId`, `nextBase0PersonId`, `lastBase0AuctionId`,
//! `nextBase0AuctionId` and the hot choices of nexmark-flink's
//! `PersonGenerator`, `AuctionGenerator` and `BidGenerator`).
//!
//! Ids are a pure function of the event id, never of what was generated
//! before: that is what lets any generator produce any event on its own.
//! "Base 0" ids count people (auctions) from 0; the records add
//! [`FIRST_PERSON_ID`] ([`FIRST_AUCTION_ID`]).
//!
//! Guarantees, with `last` the base-0 id of the newest person (auction) at
//! or before an event id:
//! - a chosen person is at most `last + PERSON_ID_LEAD`, a chosen auction at
//!   most `last + AUCTION_ID_LEAD`: references may run a few ids ahead of
//!   their record, as if the two events had been swapped in time;
//! - a random person is at least `last + 1 - num_active_people`, a random
//!   auction at least `last - num_in_flight_auctions`; the hot ones are the
//!   first (auction, seller) or second (bidder) id of the block of
//!   [`HOT_GROUP`] ids that holds `last`.

use super::super::rng::SimRng;
use super::config::NexmarkConfig;

/// Ids start here so that queries find matches even in small runs.
pub const FIRST_PERSON_ID: i64 = 1000;
pub const FIRST_AUCTION_ID: i64 = 1000;
pub const FIRST_CATEGORY_ID: i64 = 10;
/// Categories are `FIRST_CATEGORY_ID .. FIRST_CATEGORY_ID + NUM_CATEGORIES`.
pub const NUM_CATEGORIES: u64 = 5;
/// How far past the newest person a random seller or bidder may be.
pub const PERSON_ID_LEAD: u64 = 10;
/// How far past the newest auction a random bid's auction may be.
pub const AUCTION_ID_LEAD: u64 = 10;
/// The hot auction, seller and bidder stay the same for blocks of this many
/// auction or person ids (the spec's `HOT_AUCTION_RATIO`,
/// `HOT_SELLER_RATIO` and `HOT_BIDDER_RATIO`, all 100).
pub const HOT_GROUP: u64 = 100;

/// The table an event id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

impl EventKind {
    /// By the event id's place in its cycle of `total_proportion` ids.
    pub fn of(config: &NexmarkConfig, event_id: u64) -> EventKind {
        let rem = event_id % config.total_proportion();
        if rem < config.person_proportion {
            EventKind::Person
        } else if rem < config.person_proportion + config.auction_proportion {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }
}

/// The newest person at or before `event_id` (base 0): the event's own id
/// if it is a person.
pub fn last_base0_person_id(config: &NexmarkConfig, event_id: u64) -> u64 {
    let epoch = event_id / config.total_proportion();
    let offset = (event_id % config.total_proportion()).min(config.person_proportion - 1);
    epoch * config.person_proportion + offset
}

/// The newest auction at or before `event_id` (base 0): the event's own id
/// if it is an auction; -1 before the first auction.
pub fn last_base0_auction_id(config: &NexmarkConfig, event_id: u64) -> i64 {
    let (pp, ap) = (config.person_proportion, config.auction_proportion);
    let epoch = (event_id / config.total_proportion()) as i64;
    let offset = event_id % config.total_proportion();
    let (epoch, offset) = if offset < pp {
        // A person: the last auction of the previous cycle.
        (epoch - 1, ap - 1)
    } else if offset >= pp + ap {
        // A bid: the last auction of this cycle.
        (epoch, ap - 1)
    } else {
        (epoch, offset - pp)
    };
    epoch * ap as i64 + offset as i64
}

/// A random seller or bidder (base 0): one of the newest
/// `num_active_people` people or up to [`PERSON_ID_LEAD`] ahead of them.
pub fn next_base0_person_id(config: &NexmarkConfig, event_id: u64, rng: &mut SimRng) -> u64 {
    let num_people = last_base0_person_id(config, event_id) + 1;
    let active = num_people.min(config.num_active_people);
    num_people - active + rng.below(active + PERSON_ID_LEAD)
}

/// A random auction for a bid (base 0): one of the newest
/// `num_in_flight_auctions + 1` auctions or up to [`AUCTION_ID_LEAD`] ahead.
pub fn next_base0_auction_id(config: &NexmarkConfig, event_id: u64, rng: &mut SimRng) -> u64 {
    let last = last_base0_auction_id(config, event_id);
    let min = (last - config.num_in_flight_auctions as i64).max(0);
    let span = (last - min + 1) as u64 + AUCTION_ID_LEAD;
    min as u64 + rng.below(span)
}

/// The hot seller at `event_id` (base 0): the first person of the block of
/// [`HOT_GROUP`] that holds the newest person.
pub fn hot_seller(config: &NexmarkConfig, event_id: u64) -> u64 {
    last_base0_person_id(config, event_id) / HOT_GROUP * HOT_GROUP
}

/// The hot bidder at `event_id` (base 0): the second person of that block,
/// so that hot bidders and hot sellers differ. It may be one ahead of the
/// newest person, within [`PERSON_ID_LEAD`].
pub fn hot_bidder(config: &NexmarkConfig, event_id: u64) -> u64 {
    hot_seller(config, event_id) + 1
}

/// The hot auction at `event_id` (base 0): the first auction of the block
/// of [`HOT_GROUP`] that holds the newest auction (0 before the first).
pub fn hot_auction(config: &NexmarkConfig, event_id: u64) -> u64 {
    let last = last_base0_auction_id(config, event_id).max(0) as u64;
    last / HOT_GROUP * HOT_GROUP
}
