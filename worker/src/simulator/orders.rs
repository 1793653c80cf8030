//! Order flow: whole order life cycles, decided when the order is created.
//!
//! `new → (partially_filled)* → filled | cancelled`, or `new → rejected`. The
//! `new` event is emitted at creation; the later events are scheduled at
//! strictly increasing event times and released as the simulated clock passes
//! them.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::records::{OrderEvent, values};
use super::rng::SimRng;

/// Size of the trader pool (`TRD-001` …).
pub const TRADERS: usize = 20;

/// Probability that a tick comes with a new order. With ~3.2 events per order
/// this gives roughly one order event per three ticks.
pub(crate) const NEW_ORDER_PER_TICK: f64 = 0.10;
const REJECT_P: f64 = 0.03;
const MARKET_P: f64 = 0.30;

/// A scheduled event, ordered by (ts, seq) so release order is deterministic.
struct Scheduled {
    ts: i64,
    seq: u64,
    event: OrderEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(other.ts, other.seq))
    }
}

pub(crate) struct OrderFlow {
    next_order: u64,
    traders: Vec<Arc<str>>,
    trader_orders: Vec<u64>,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
}

/// Event-time gap to the next life-cycle event: at least 1 ms, mean ~`mean_ms`.
fn gap(rng: &mut SimRng, mean_ms: f64) -> i64 {
    1 + (rng.exp1() * mean_ms).min(600_000.0) as i64
}

impl OrderFlow {
    pub(crate) fn new() -> Self {
        Self {
            next_order: 1,
            traders: (1..=TRADERS)
                .map(|i| Arc::from(format!("TRD-{i:03}")))
                .collect(),
            trader_orders: vec![0; TRADERS],
            scheduled: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Next scheduled event with `ts <= now`, in (ts, creation) order.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<OrderEvent> {
        if self.scheduled.peek()?.0.ts <= now {
            self.scheduled.pop().map(|Reverse(s)| s.event)
        } else {
            None
        }
    }

    /// Life-cycle events scheduled after the current clock.
    pub(crate) fn pending(&self) -> usize {
        self.scheduled.len()
    }

    fn schedule(&mut self, event: OrderEvent) {
        self.seq += 1;
        self.scheduled.push(Reverse(Scheduled {
            ts: event.ts,
            seq: self.seq,
            event,
        }));
    }

    /// Creates an order on `symbol` at `ts`, schedules its later events and
    /// returns its `new` event. `momentum` > 0 means the price just went up.
    /// A sweep order has its side and a size multiplier given.
    pub(crate) fn create(
        &mut self,
        rng: &mut SimRng,
        symbol: &Arc<str>,
        mid: f64,
        momentum: f64,
        ts: i64,
        sweep: Option<(bool, i64)>,
    ) -> OrderEvent {
        let order_no = self.next_order;
        self.next_order += 1;
        let trader = rng.below(TRADERS as u64) as usize;
        self.trader_orders[trader] += 1;
        let p_buy = if momentum > 0.0 {
            0.6
        } else if momentum < 0.0 {
            0.4
        } else {
            0.5
        };
        let buy = match sweep {
            Some((buy, _)) => buy,
            None => rng.chance(p_buy),
        };
        let lots = if rng.chance(0.03) {
            20 + rng.below(81) as i64
        } else {
            1 + (rng.exp1() * 4.0).min(50.0) as i64
        } * sweep.map_or(1, |(_, size)| size);
        let market = rng.chance(MARKET_P);
        let price = if market {
            None
        } else {
            // Mostly passive (behind the mid), sometimes marketable.
            let bps = -2.0 + 12.0 * rng.uniform();
            let p = if buy {
                mid * (1.0 - bps * 1e-4)
            } else {
                mid * (1.0 + bps * 1e-4)
            };
            Some(((p * 100.0).round() as i64).max(1) as f64 / 100.0)
        };
        let new = OrderEvent {
            order_id: Arc::from(format!("ORD-{order_no:07}")),
            client_order_id: Arc::from(format!(
                "CL-{:03}-{:07}",
                trader + 1,
                self.trader_orders[trader]
            )),
            trader_id: self.traders[trader].clone(),
            symbol: symbol.clone(),
            side: if buy { values::BUY } else { values::SELL },
            order_type: if market {
                values::MARKET
            } else {
                values::LIMIT
            },
            quantity: lots * 100,
            price,
            status: values::NEW,
            filled_quantity: 0,
            ts,
        };

        let mut t = ts;
        let next = |status: &'static str, filled_lots: i64, t: i64| OrderEvent {
            status,
            filled_quantity: filled_lots * 100,
            ts: t,
            ..new.clone()
        };
        if rng.chance(REJECT_P) {
            t += gap(rng, 2.0);
            let e = next(values::REJECTED, 0, t);
            self.schedule(e);
            return new;
        }
        // Partial fills, each leaving at least one lot for the next step.
        let (fill_gap, want_partials) = if market {
            (3.0, if rng.chance(0.3) { 1 + rng.below(2) } else { 0 })
        } else {
            let u = rng.uniform();
            let k = if u < 0.45 {
                0
            } else if u < 0.75 {
                1
            } else if u < 0.9 {
                2
            } else {
                3
            };
            (800.0, k)
        };
        let partials = (want_partials as i64).min(lots - 1);
        let mut filled = 0;
        for i in 0..partials {
            let room = lots - partials + i - filled; // max lots to add now
            filled += 1 + rng.below(room as u64) as i64;
            t += gap(rng, fill_gap);
            let e = next(values::PARTIALLY_FILLED, filled, t);
            self.schedule(e);
        }
        let e = if market || rng.chance(0.6) {
            t += gap(rng, fill_gap);
            next(values::FILLED, lots, t)
        } else {
            t += gap(rng, 3000.0);
            next(values::CANCELLED, filled, t)
        };
        self.schedule(e);
        new
    }
}
