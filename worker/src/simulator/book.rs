//! A per-symbol price-level order book around the mid.
//!
//! Each side holds [`BOOK_DEPTH`] contiguous one-cent levels: bids at
//! `best_bid - i` cents, asks at `best_ask + i` cents, with `best_bid <
//! best_ask`. When the mid moves the ladder shifts (the level that falls off is
//! deleted, the new one added); trades and quote activity update quantities.
//! Every emitted update's `level` is the rank of its price at that moment and,
//! replayed in order, the updates keep every bid below every ask.

use std::collections::VecDeque;
use std::sync::Arc;

use super::records::{BookUpdate, values};
use super::rng::SimRng;

/// Levels per side (levels 0..BOOK_DEPTH).
pub const BOOK_DEPTH: usize = 5;

#[derive(Clone, Copy, Debug)]
struct Level {
    price_c: i64,
    qty: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bid,
    Ask,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Bid => values::BID,
            Side::Ask => values::ASK,
        }
    }
}

/// Emits updates for one symbol at one event time.
struct Emitter<'a> {
    symbol: &'a Arc<str>,
    ts: i64,
    out: &'a mut Vec<BookUpdate>,
}

impl Emitter<'_> {
    fn emit(&mut self, side: Side, level: usize, l: Level, action: &'static str) {
        self.out.push(BookUpdate {
            symbol: self.symbol.clone(),
            side: side.name(),
            price: l.price_c as f64 / 100.0,
            quantity: if action == values::DELETE { 0 } else { l.qty },
            level: level as i32,
            action,
            ts: self.ts,
        });
    }
}

#[derive(Default)]
pub(crate) struct Book {
    bids: VecDeque<Level>,
    asks: VecDeque<Level>,
}

/// Resting quantity for a new level: round lots, deeper levels larger.
fn fresh_qty(rng: &mut SimRng, level: usize) -> i64 {
    let mean_lots = 3.0 + 2.0 * level as f64;
    100 * (1 + (rng.exp1() * mean_lots).min(60.0) as i64)
}

impl Book {
    /// Moves the ladders towards best bid `bb` / best ask `ba` (cents, `bb <
    /// ba`), emitting the deletes and adds. A side moves only once its target
    /// is at least `hysteresis` cents away: resting levels stay while the mid
    /// wanders inside the spread. The first call emits the initial book.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reprice(
        &mut self,
        rng: &mut SimRng,
        symbol: &Arc<str>,
        ts: i64,
        bb: i64,
        ba: i64,
        hysteresis: i64,
        out: &mut Vec<BookUpdate>,
    ) {
        debug_assert!(bb < ba);
        let mut em = Emitter { symbol, ts, out };
        if self.bids.is_empty() {
            for lvl in 0..BOOK_DEPTH {
                let l = Level {
                    price_c: bb - lvl as i64,
                    qty: fresh_qty(rng, lvl),
                };
                self.bids.push_back(l);
                em.emit(Side::Bid, lvl, l, values::ADD);
            }
            for lvl in 0..BOOK_DEPTH {
                let l = Level {
                    price_c: ba + lvl as i64,
                    qty: fresh_qty(rng, lvl),
                };
                self.asks.push_back(l);
                em.emit(Side::Ask, lvl, l, values::ADD);
            }
            return;
        }
        let (cur_bb, cur_ba) = (self.bids[0].price_c, self.asks[0].price_c);
        let keep = |target: i64, cur: i64| {
            if (target - cur).abs() < hysteresis {
                cur
            } else {
                target
            }
        };
        let (target_bb, target_ba) = (bb, ba);
        let (mut bb, mut ba) = (keep(bb, cur_bb), keep(ba, cur_ba));
        if bb >= ba {
            (bb, ba) = (target_bb, target_ba);
        }
        // Every intermediate state keeps bids below asks if a rising ask side
        // moves first and a falling bid side moves first.
        if ba > cur_ba {
            self.shift(rng, Side::Ask, ba, &mut em);
            self.shift(rng, Side::Bid, bb, &mut em);
        } else {
            self.shift(rng, Side::Bid, bb, &mut em);
            self.shift(rng, Side::Ask, ba, &mut em);
        }
    }

    fn shift(&mut self, rng: &mut SimRng, side: Side, target: i64, em: &mut Emitter<'_>) {
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        let cur = levels[0].price_c;
        if target == cur {
            return;
        }
        // Direction of increasing depth: bids go down, asks go up.
        let away: i64 = if side == Side::Bid { -1 } else { 1 };
        let d = (target - cur).unsigned_abs() as usize;
        let last = BOOK_DEPTH - 1;
        if d >= BOOK_DEPTH {
            // Jumped past the whole ladder: requote the side.
            for lvl in (0..BOOK_DEPTH).rev() {
                let l = levels.pop_back().expect("full ladder");
                em.emit(side, lvl, l, values::DELETE);
            }
            for lvl in 0..BOOK_DEPTH {
                let l = Level {
                    price_c: target + away * lvl as i64,
                    qty: fresh_qty(rng, lvl),
                };
                levels.push_back(l);
                em.emit(side, lvl, l, values::ADD);
            }
        } else if (target - cur) * away < 0 {
            // Best price improves: the deepest level falls off, a new best appears.
            for _ in 0..d {
                let l = levels.pop_back().expect("full ladder");
                em.emit(side, last, l, values::DELETE);
                let l = Level {
                    price_c: levels[0].price_c - away,
                    qty: fresh_qty(rng, 0),
                };
                levels.push_front(l);
                em.emit(side, 0, l, values::ADD);
            }
        } else {
            // Best price recedes: the best level is gone, a deeper one appears.
            for _ in 0..d {
                let l = levels.pop_front().expect("full ladder");
                em.emit(side, 0, l, values::DELETE);
                let l = Level {
                    price_c: levels[levels.len() - 1].price_c + away,
                    qty: fresh_qty(rng, last),
                };
                levels.push_back(l);
                em.emit(side, last, l, values::ADD);
            }
        }
    }

    /// A trade of `volume` shares took liquidity from the best level of the
    /// opposite side: its quantity shrinks (or is replenished once exhausted).
    pub(crate) fn trade(
        &mut self,
        rng: &mut SimRng,
        symbol: &Arc<str>,
        ts: i64,
        aggressor_buy: bool,
        volume: i64,
        out: &mut Vec<BookUpdate>,
    ) {
        let side = if aggressor_buy { Side::Ask } else { Side::Bid };
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        let Some(top) = levels.front_mut() else {
            return;
        };
        let taken = 100 * (volume / 100).max(1);
        top.qty = if top.qty > 100 {
            (top.qty - taken).max(100)
        } else {
            fresh_qty(rng, 0)
        };
        let l = *top;
        Emitter { symbol, ts, out }.emit(side, 0, l, values::UPDATE);
    }

    /// Quote activity: a random level (near the top more often) changes size.
    pub(crate) fn churn(
        &mut self,
        rng: &mut SimRng,
        symbol: &Arc<str>,
        ts: i64,
        out: &mut Vec<BookUpdate>,
    ) {
        let side = if rng.chance(0.5) {
            Side::Bid
        } else {
            Side::Ask
        };
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if levels.is_empty() {
            return;
        }
        let lvl = ((rng.exp1() * 1.3) as usize).min(levels.len() - 1);
        let delta = 100 * (1 + rng.below(3) as i64);
        let l = &mut levels[lvl];
        l.qty = if rng.chance(0.5) || l.qty <= delta {
            l.qty + delta
        } else {
            l.qty - delta
        };
        let l = *l;
        Emitter { symbol, ts, out }.emit(side, lvl, l, values::UPDATE);
    }

    #[cfg(test)]
    pub(crate) fn best(&self) -> Option<(i64, i64)> {
        Some((self.bids.front()?.price_c, self.asks.front()?.price_c))
    }
}
