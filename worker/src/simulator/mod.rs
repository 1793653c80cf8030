//! Deterministic market simulator: market ticks, order events and order-book
//! updates for a universe of symbols. The Nexmark benchmark's generator
//! (person, auction, bid) lives in [`nexmark`], on the same random streams.
//!
//! # Model
//!
//! - **Arrivals.** Each symbol has its own Poisson arrival process; together they
//!   produce [`SimConfig::ticks_per_second`] ticks per second of event time
//!   (more volatile names trade more often). The per-symbol streams are merged
//!   in event-time order, and each symbol's `ts` is strictly increasing: when
//!   two arrivals of one symbol fall into the same millisecond the second is
//!   moved to the next one. A symbol therefore never exceeds 1000 ticks per
//!   second of event time; above that rate event time stretches (and
//!   [`Simulator::event_time_ms`] runs slower than the requested rate).
//! - **Prices.** The mid of every symbol follows geometric Brownian motion with
//!   the symbol's annual volatility scaled to the time step (252 trading days
//!   of 6.5 hours). Each tick comes from one exchange, which quotes slightly
//!   off the common mid with its own spread (a few bps, wider for volatile
//!   names); bid and ask are rounded to cents with `ask - bid >= 0.01`. The
//!   trade price lies in `[bid, ask]`, mostly at the touch of the aggressor;
//!   buys are more likely right after an up-move. Trade sizes are log-normal
//!   around the symbol's average with occasional block trades; quote sizes are
//!   round lots.
//! - **Orders.** About one tick in ten starts an order with a complete,
//!   consistent life cycle (see [`OrderEvent`]), roughly one order event per
//!   three ticks.
//! - **Book.** Five one-cent levels per side around the mid per symbol; mid
//!   moves shift the ladders (delete + add), trades and quote activity update
//!   sizes: roughly 1.7 updates per tick.
//! - **Bursts.** With [`BurstConfig`], arrival rate and trade sizes are
//!   multiplied during periodic windows.
//! - **Market events.** With [`MarketEvents`], price jumps, one symbol's
//!   volume bursts, one-sided order sweeps and venue dislocations recur
//!   (see `events`): what price, volume, order-imbalance and arbitrage
//!   alerts watch for.
//! - **Jitter.** With `max_jitter_ms > 0`, every stream is emitted out of order,
//!   but no event is ever more than `max_jitter_ms` older than an event of the
//!   same stream emitted before it.
//!
//! # Determinism
//!
//! The output is a pure function of the [`SimConfig`]: the simulator advances
//! one tick at a time and [`Simulator::next_batch`] only decides how many steps
//! to take, so any split of a run into batches yields the same concatenated
//! streams. Randomness comes from ChaCha8 streams (market, orders, book,
//! jitter) and platform-independent arithmetic (see `rng`), so the same seed
//! gives the same bytes everywhere. Jitter draws come from their own stream:
//! switching jitter on reorders the events without changing them.

mod book;
mod events;
pub mod nexmark;
mod orders;
mod records;
mod reorder;
mod rng;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

pub use book::BOOK_DEPTH;
pub use events::MarketEvents;
pub use orders::TRADERS;
pub use records::{
    BookUpdate, MarketTick, OrderEvent, books_to_batch, orders_to_batch, ticks_to_batch, values,
};

use book::Book;
use orders::{NEW_ORDER_PER_TICK, OrderFlow};
use reorder::ReorderBuffer;
use rng::SimRng;

/// One tradable symbol of the simulated universe.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SymbolSpec {
    pub symbol: String,
    /// Mid price at the start of the run.
    pub start_price: f64,
    /// Annualised volatility of the mid, e.g. 0.30 for 30 %.
    pub annual_volatility: f64,
    /// Average shares per trade.
    pub avg_trade_size: f64,
}

impl SymbolSpec {
    pub fn new(
        symbol: impl Into<String>,
        start_price: f64,
        annual_volatility: f64,
        avg_trade_size: f64,
    ) -> Self {
        Self {
            symbol: symbol.into(),
            start_price,
            annual_volatility,
            avg_trade_size,
        }
    }

    /// The spec of `symbol` in the [`default_universe`] (case-insensitive), or
    /// a generic one (a start price between 20 and 500 derived from the name,
    /// 35 % volatility, 100 shares per trade) for any other symbol.
    pub fn for_symbol(symbol: &str) -> Self {
        if let Some(spec) = default_universe()
            .into_iter()
            .find(|s| s.symbol.eq_ignore_ascii_case(symbol))
        {
            return spec;
        }
        // FNV-1a: a stable, platform-independent price per name.
        let hash = symbol.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let price = 20.0 + (hash % 48_000) as f64 / 100.0;
        Self::new(symbol, price, 0.35, 100.0)
    }
}

/// AAPL, GOOGL, MSFT, AMZN, TSLA, NVDA, META and NFLX at early-2026 price
/// levels, with their typical volatilities (TSLA and NVDA the most volatile).
pub fn default_universe() -> Vec<SymbolSpec> {
    [
        ("AAPL", 270.0, 0.26, 120.0),
        ("GOOGL", 315.0, 0.30, 100.0),
        ("MSFT", 480.0, 0.24, 80.0),
        ("AMZN", 230.0, 0.32, 110.0),
        ("TSLA", 440.0, 0.62, 150.0),
        ("NVDA", 185.0, 0.50, 220.0),
        ("META", 660.0, 0.38, 70.0),
        ("NFLX", 95.0, 0.36, 130.0),
    ]
    .into_iter()
    .map(|(s, p, v, q)| SymbolSpec::new(s, p, v, q))
    .collect()
}

/// Periodic volume spikes: from `every_ms` after the start, every `every_ms`
/// of event time, a window of `duration_ms` in which ticks arrive
/// `rate_multiplier` times as fast and trades are `volume_multiplier` times as
/// large.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BurstConfig {
    pub every_ms: i64,
    pub duration_ms: i64,
    pub rate_multiplier: f64,
    pub volume_multiplier: f64,
}

impl Default for BurstConfig {
    /// A 5-second spike every 30 seconds: 5× the ticks, 3× the trade size.
    fn default() -> Self {
        Self {
            every_ms: 30_000,
            duration_ms: 5_000,
            rate_multiplier: 5.0,
            volume_multiplier: 3.0,
        }
    }
}

impl BurstConfig {
    /// Whether event time `offset_ms` after the start of the run is in a burst.
    pub fn active_at(&self, offset_ms: i64) -> bool {
        offset_ms >= self.every_ms && offset_ms % self.every_ms < self.duration_ms
    }
}

/// Everything that determines a simulated run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimConfig {
    pub seed: u64,
    pub symbols: Vec<SymbolSpec>,
    /// Aggregate event-time rate of market ticks over all symbols.
    pub ticks_per_second: f64,
    /// Event time of the start of the run, epoch milliseconds.
    pub start_time_ms: i64,
    /// Bounded out-of-orderness of the emitted streams; 0 = in order.
    pub max_jitter_ms: i64,
    pub burst: Option<BurstConfig>,
    /// Venues quoting the symbols; the first ones publish more often.
    pub exchanges: Vec<String>,
    /// Jumps, bursts, sweeps and dislocations; `None`: a calm market.
    #[serde(default)]
    pub events: Option<MarketEvents>,
}

/// 2026-01-05T14:30:00Z, a Monday's US market open.
pub const DEFAULT_START_TIME_MS: i64 = 1_767_623_400_000;

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            symbols: default_universe(),
            ticks_per_second: 1000.0,
            start_time_ms: DEFAULT_START_TIME_MS,
            max_jitter_ms: 0,
            burst: None,
            exchanges: ["NASDAQ", "NYSE", "ARCA", "BATS"]
                .into_iter()
                .map(String::from)
                .collect(),
            events: None,
        }
    }
}

/// A [`SimConfig`] the simulator cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid simulator config: {0}")]
pub struct SimConfigError(pub String);

impl SimConfig {
    /// Checks that the config describes a runnable market.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        let err = |m: String| Err(SimConfigError(m));
        if self.symbols.is_empty() {
            return err("at least one symbol is required".into());
        }
        for (i, s) in self.symbols.iter().enumerate() {
            if s.symbol.is_empty() {
                return err("symbol names must not be empty".into());
            }
            if self.symbols[..i].iter().any(|o| o.symbol == s.symbol) {
                return err(format!("symbol {} is listed twice", s.symbol));
            }
            if !(s.start_price.is_finite() && s.start_price >= 0.05) {
                return err(format!(
                    "{}: start_price must be at least 0.05, got {}",
                    s.symbol, s.start_price
                ));
            }
            if !(s.annual_volatility.is_finite() && (0.0..=10.0).contains(&s.annual_volatility)) {
                return err(format!(
                    "{}: annual_volatility must be within 0..=10, got {}",
                    s.symbol, s.annual_volatility
                ));
            }
            if !(s.avg_trade_size.is_finite() && s.avg_trade_size >= 1.0) {
                return err(format!(
                    "{}: avg_trade_size must be at least 1, got {}",
                    s.symbol, s.avg_trade_size
                ));
            }
        }
        if !(self.ticks_per_second.is_finite() && self.ticks_per_second > 0.0) {
            return err(format!(
                "ticks_per_second must be positive, got {}",
                self.ticks_per_second
            ));
        }
        if self.max_jitter_ms < 0 {
            return err(format!(
                "max_jitter_ms must not be negative, got {}",
                self.max_jitter_ms
            ));
        }
        if let Some(problem) = self.events.as_ref().and_then(MarketEvents::problem) {
            return err(problem);
        }
        if self.exchanges.is_empty() || self.exchanges.iter().any(String::is_empty) {
            return err("at least one non-empty exchange name is required".into());
        }
        if let Some(b) = &self.burst {
            if b.every_ms <= 0 || b.duration_ms <= 0 || b.duration_ms > b.every_ms {
                return err(format!(
                    "burst needs 0 < duration_ms <= every_ms, got every {} duration {}",
                    b.every_ms, b.duration_ms
                ));
            }
            let ok = |m: f64| m.is_finite() && m > 0.0;
            if !ok(b.rate_multiplier) || !ok(b.volume_multiplier) {
                return err("burst multipliers must be positive".into());
            }
        }
        Ok(())
    }
}

/// Events generated by one call, each stream in emission order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimOutput {
    pub ticks: Vec<MarketTick>,
    pub orders: Vec<OrderEvent>,
    pub books: Vec<BookUpdate>,
}

impl SimOutput {
    /// Arrow batches in [`SourceTable::ALL`](crate::codec::schema::SourceTable::ALL)
    /// order: market ticks, order events, book updates.
    pub fn to_batches(&self) -> [RecordBatch; 3] {
        [
            ticks_to_batch(&self.ticks),
            orders_to_batch(&self.orders),
            books_to_batch(&self.books),
        ]
    }

    /// Total number of events of all three streams.
    pub fn len(&self) -> usize {
        self.ticks.len() + self.orders.len() + self.books.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s events after this output's.
    pub fn append(&mut self, mut other: SimOutput) {
        self.ticks.append(&mut other.ticks);
        self.orders.append(&mut other.orders);
        self.books.append(&mut other.books);
    }
}

/// Generates `ticks` ticks (with their orders and book updates) and drains the
/// jitter buffers: a complete bounded run.
pub fn generate(config: SimConfig, ticks: usize) -> SimOutput {
    let mut sim = Simulator::new(config);
    let mut out = sim.next_batch(ticks);
    out.append(sim.flush());
    out
}

/// How far a saturated symbol's arrival clock may lag behind its ticks.
const MAX_BACKLOG_MS: i64 = 1000;
/// Share of the half spread the mid may move before the book's touch follows.
const BOOK_HYSTERESIS: f64 = 0.5;
/// Trading time per year: 252 days of 6.5 hours, in milliseconds.
const MS_PER_TRADING_YEAR: f64 = 252.0 * 6.5 * 3600.0 * 1000.0;
/// Dispersion of log trade sizes.
const TRADE_SIZE_SIGMA: f64 = 0.9;
/// Share of trades that are blocks (at least 6× the average, > 500 shares).
const BLOCK_TRADE_P: f64 = 0.015;
/// Share of trades at the aggressor's touch (the rest anywhere in the spread).
const AT_TOUCH_P: f64 = 0.75;
/// Per-tick noise of an exchange's quote around the mid (relative, 0.2 bps).
const QUOTE_NOISE: f64 = 0.2e-4;

struct Exchange {
    name: Arc<str>,
    /// Cumulative selection weight.
    cum_weight: f64,
    /// Static offset of this venue's quotes from the mid (relative).
    bias: f64,
    spread_mult: f64,
}

struct SymbolState {
    symbol: Arc<str>,
    mid: f64,
    sigma: f64,
    /// Base bid-ask spread as a fraction of the mid.
    spread_frac: f64,
    avg_trade_size: f64,
    /// Share of the aggregate tick rate.
    rate_share: f64,
    /// Continuous arrival clock, ms after the start.
    arrival_ms: f64,
    last_ts: i64,
    /// Log return of the mid at the last tick.
    last_return: f64,
    /// The mid at the start: price jumps head back toward it.
    start_mid: f64,
    book: Book,
}

impl SymbolState {
    /// Target best bid and ask of the consolidated book, in cents, and the
    /// distance in cents a side's target must move before the side follows.
    fn touch(&self) -> (i64, i64, i64) {
        let half = 0.5 * self.mid * self.spread_frac;
        let bb = (((self.mid - half) * 100.0).floor() as i64).max(BOOK_DEPTH as i64);
        let ba = (((self.mid + half) * 100.0).ceil() as i64).max(bb + 1);
        let hysteresis = ((half * 100.0 * BOOK_HYSTERESIS).ceil() as i64).max(1);
        (bb, ba, hysteresis)
    }
}

struct Jitter {
    max_ms: u64,
    rng: SimRng,
    ticks: ReorderBuffer<MarketTick>,
    orders: ReorderBuffer<OrderEvent>,
    books: ReorderBuffer<BookUpdate>,
}

impl Jitter {
    fn delay(&mut self) -> i64 {
        self.rng.below(self.max_ms + 1) as i64
    }

    fn release_before(&mut self, limit: i64, out: &mut SimOutput) {
        self.ticks.release_before(limit, &mut out.ticks);
        self.orders.release_before(limit, &mut out.orders);
        self.books.release_before(limit, &mut out.books);
    }
}

/// The market simulator. See the [module docs](self) for the model.
pub struct Simulator {
    config: SimConfig,
    start: i64,
    /// Aggregate tick rate per millisecond (outside bursts).
    rate_per_ms: f64,
    symbols: Vec<SymbolState>,
    exchanges: Vec<Exchange>,
    /// Next arrival per symbol: (ts, symbol index).
    arrivals: BinaryHeap<Reverse<(i64, usize)>>,
    market_rng: SimRng,
    order_rng: SimRng,
    book_rng: SimRng,
    orders: OrderFlow,
    jitter: Option<Jitter>,
    events: Option<events::EventClock>,
    out: SimOutput,
    scratch: Vec<BookUpdate>,
    clock: i64,
    generated: u64,
}

impl Simulator {
    /// A simulator at the start of the run.
    ///
    /// # Panics
    /// If the config is invalid; use [`Simulator::try_new`] to get the error.
    pub fn new(config: SimConfig) -> Simulator {
        match Self::try_new(config) {
            Ok(sim) => sim,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(config: SimConfig) -> Result<Simulator, SimConfigError> {
        config.validate()?;
        let seed = config.seed;
        let start = config.start_time_ms;
        let weights: Vec<f64> = config
            .symbols
            .iter()
            .map(|s| 0.6 + s.annual_volatility.min(2.0))
            .collect();
        let total_weight: f64 = weights.iter().sum();
        let symbols = config
            .symbols
            .iter()
            .zip(&weights)
            .map(|(s, w)| SymbolState {
                symbol: Arc::from(s.symbol.as_str()),
                mid: s.start_price,
                sigma: s.annual_volatility,
                spread_frac: (1.0 + 5.0 * s.annual_volatility) * 1e-4,
                avg_trade_size: s.avg_trade_size,
                rate_share: w / total_weight,
                arrival_ms: 0.0,
                last_ts: start - 1,
                last_return: 0.0,
                start_mid: s.start_price,
                book: Book::default(),
            })
            .collect();
        let n_ex = config.exchanges.len();
        let mut cum_weight = 0.0;
        let exchanges = config
            .exchanges
            .iter()
            .enumerate()
            .map(|(i, name)| {
                cum_weight += 1.0 / (1.0 + 0.35 * i as f64);
                Exchange {
                    name: Arc::from(name.as_str()),
                    cum_weight,
                    // Venues spread ±0.3 bps around the mid; later ones wider.
                    bias: (i as f64 - (n_ex - 1) as f64 / 2.0) * 0.2e-4,
                    spread_mult: 1.0 + 0.1 * i as f64,
                }
            })
            .collect();
        let jitter = (config.max_jitter_ms > 0).then(|| Jitter {
            max_ms: config.max_jitter_ms as u64,
            rng: SimRng::new(seed, 3),
            ticks: ReorderBuffer::new(),
            orders: ReorderBuffer::new(),
            books: ReorderBuffer::new(),
        });
        let mut sim = Simulator {
            rate_per_ms: config.ticks_per_second / 1000.0,
            start,
            symbols,
            exchanges,
            arrivals: BinaryHeap::new(),
            market_rng: SimRng::new(seed, 0),
            order_rng: SimRng::new(seed, 1),
            book_rng: SimRng::new(seed, 2),
            orders: OrderFlow::new(),
            jitter,
            events: config
                .events
                .clone()
                .map(|e| events::EventClock::new(e, seed, start)),
            out: SimOutput::default(),
            scratch: Vec::new(),
            clock: start,
            generated: 0,
            config,
        };
        for i in 0..sim.symbols.len() {
            sim.schedule_arrival(i, start - 1);
        }
        Ok(sim)
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Generates the next `ticks` market ticks, with the order events and book
    /// updates of the same stretch of event time.
    ///
    /// Without jitter the output holds exactly `ticks` ticks, each stream in
    /// event-time order. With jitter, events still in the reorder buffer are
    /// held back (at most `max_jitter_ms` of event time per stream) and come
    /// out in later calls or from [`Simulator::flush`].
    pub fn next_batch(&mut self, ticks: usize) -> SimOutput {
        self.out.ticks.reserve(ticks);
        self.out.orders.reserve(ticks / 3 + 1);
        self.out.books.reserve(ticks * 2);
        for _ in 0..ticks {
            self.step();
        }
        std::mem::take(&mut self.out)
    }

    /// Drains the jitter buffers (the end of a bounded run). Scheduled future
    /// order life-cycle events (after [`Simulator::event_time_ms`]) are not
    /// emitted. The jitter bound only holds within the events emitted before a
    /// flush: generating more afterwards may emit older events.
    pub fn flush(&mut self) -> SimOutput {
        if let Some(j) = &mut self.jitter {
            j.ticks.drain(&mut self.out.ticks);
            j.orders.drain(&mut self.out.orders);
            j.books.drain(&mut self.out.books);
        }
        std::mem::take(&mut self.out)
    }

    /// Event time of the latest generated tick (the start time before the
    /// first), for real-time pacing.
    pub fn event_time_ms(&self) -> i64 {
        self.clock
    }

    /// Ticks generated so far (including ticks still held by jitter).
    pub fn ticks_generated(&self) -> u64 {
        self.generated
    }

    /// Events generated but held back by the jitter buffers.
    pub fn buffered(&self) -> usize {
        self.jitter
            .as_ref()
            .map_or(0, |j| j.ticks.len() + j.orders.len() + j.books.len())
    }

    /// Order life-cycle events scheduled after the current event time.
    pub fn pending_order_events(&self) -> usize {
        self.orders.pending()
    }

    fn burst(&self, offset_ms: i64) -> Option<&BurstConfig> {
        self.config
            .burst
            .as_ref()
            .filter(|b| b.active_at(offset_ms))
    }

    /// Draws symbol `i`'s next arrival, strictly after `after_ts`.
    fn schedule_arrival(&mut self, i: usize, after_ts: i64) {
        let s = &self.symbols[i];
        let rate_mult = self
            .burst(s.arrival_ms.floor() as i64)
            .map_or(1.0, |b| b.rate_multiplier);
        let rate = self.rate_per_ms * s.rate_share * rate_mult;
        let gap = self.market_rng.exp1() / rate;
        let s = &mut self.symbols[i];
        s.arrival_ms += gap;
        let mut ts = self.start.saturating_add(s.arrival_ms.floor() as i64);
        if ts <= after_ts {
            // Same millisecond as the symbol's previous tick: move on by one.
            // The arrival clock keeps its pace, so the backlog drains once the
            // rate drops; a symbol above 1000 ticks/s lags by at most
            // MAX_BACKLOG_MS and then runs at one tick per millisecond.
            ts = after_ts + 1;
            let min_clock = (ts - self.start - MAX_BACKLOG_MS) as f64;
            if s.arrival_ms < min_clock {
                s.arrival_ms = min_clock;
            }
        }
        self.arrivals.push(Reverse((ts, i)));
    }

    /// One market tick and everything that happens with it.
    fn step(&mut self) {
        let Reverse((ts, i)) = self.arrivals.pop().expect("one arrival per symbol");
        self.clock = ts;
        self.generated += 1;
        self.schedule_arrival(i, ts);

        while let Some(e) = self.orders.pop_due(ts) {
            self.emit_order(e);
        }
        self.market_events(ts);

        let tick = self.market_tick(i, ts);

        let mut scratch = std::mem::take(&mut self.scratch);
        let s = &mut self.symbols[i];
        let rng = &mut self.book_rng;
        let (bb, ba, hysteresis) = s.touch();
        s.book
            .reprice(rng, &s.symbol, ts, bb, ba, hysteresis, &mut scratch);
        if rng.chance(0.5) {
            let buy = tick.side == values::BUY;
            s.book
                .trade(rng, &s.symbol, ts, buy, tick.volume, &mut scratch);
        }
        let churn = match rng.below(10) {
            0..=2 => 0,
            3..=8 => 1,
            _ => 2,
        };
        for _ in 0..churn {
            s.book.churn(rng, &s.symbol, ts, &mut scratch);
        }
        for u in scratch.drain(..) {
            self.emit_book(u);
        }
        self.scratch = scratch;

        self.emit_tick(tick);

        if self.order_rng.chance(NEW_ORDER_PER_TICK) {
            self.new_order(i, ts, None);
        }
        if let Some(buy) = self.events.as_mut().and_then(|ev| ev.sweep_order(i)) {
            let size = self.events.as_ref().map_or(1, |ev| ev.config().sweep_size);
            self.new_order(i, ts, Some((buy, size)));
        }

        // Everything generated from now on has ts >= this tick's ts.
        if let Some(j) = &mut self.jitter {
            j.release_before(ts, &mut self.out);
        }
    }

    /// Creates and emits an order on symbol `i` (a sweep order: with its
    /// side and size multiplier).
    fn new_order(&mut self, i: usize, ts: i64, sweep: Option<(bool, i64)>) {
        let s = &self.symbols[i];
        let e = self.orders.create(
            &mut self.order_rng,
            &s.symbol,
            s.mid,
            s.last_return,
            ts,
            sweep,
        );
        self.emit_order(e);
    }

    /// Starts and ends market events at `ts`; applies a price jump.
    fn market_events(&mut self, ts: i64) {
        let Some(ev) = &mut self.events else {
            return;
        };
        let due = ev.advance(ts, self.symbols.len(), self.exchanges.len());
        if let Some(j) = due.jump {
            let size = ev.config().jump_size;
            let s = &mut self.symbols[j];
            s.mid *= if s.mid > s.start_mid {
                1.0 - size
            } else {
                1.0 + size
            };
        }
    }

    fn market_tick(&mut self, i: usize, ts: i64) -> MarketTick {
        let volume_mult = self
            .burst(ts - self.start)
            .map_or(1.0, |b| b.volume_multiplier)
            * self
                .events
                .as_ref()
                .map_or(1.0, |ev| ev.volume_multiplier(i));
        let rng = &mut self.market_rng;
        let s = &mut self.symbols[i];

        // Geometric Brownian motion over the time since this symbol's last tick.
        let dt = (ts - s.last_ts) as f64 / MS_PER_TRADING_YEAR;
        s.last_ts = ts;
        let lr = -0.5 * s.sigma * s.sigma * dt + s.sigma * dt.sqrt() * rng.normal();
        s.mid *= rng::exp(lr);
        s.last_return = lr;

        // The quoting venue and its bid/ask around the mid.
        let pick = rng.uniform() * self.exchanges.last().expect("validated").cum_weight;
        let venue = self
            .exchanges
            .iter()
            .position(|e| pick < e.cum_weight)
            .unwrap_or(self.exchanges.len() - 1);
        let ex = &self.exchanges[venue];
        let dislocation = self
            .events
            .as_ref()
            .map_or(0.0, |ev| ev.quote_offset(i, venue));
        let qmid = s.mid * (1.0 + ex.bias + dislocation + QUOTE_NOISE * rng.normal());
        let half = 0.5 * qmid * s.spread_frac * ex.spread_mult * (0.8 + 0.5 * rng.uniform());
        let bid_c = (((qmid - half) * 100.0).floor() as i64).max(1);
        let ask_c = (((qmid + half) * 100.0).ceil() as i64).max(bid_c + 1);

        // The trade: buyers chase up-moves.
        let p_buy = if lr > 0.0 {
            0.65
        } else if lr < 0.0 {
            0.35
        } else {
            0.5
        };
        let buy = rng.chance(p_buy);
        let price_c = if rng.chance(AT_TOUCH_P) {
            if buy { ask_c } else { bid_c }
        } else {
            bid_c + rng.below((ask_c - bid_c + 1) as u64) as i64
        };
        let shares = if rng.chance(BLOCK_TRADE_P) {
            let block = s.avg_trade_size * (6.0 + 8.0 * rng.exp1());
            100.0 * (block / 100.0).ceil().max(6.0)
        } else {
            let z = rng.normal();
            s.avg_trade_size
                * rng::exp(TRADE_SIZE_SIGMA * z - 0.5 * TRADE_SIZE_SIGMA * TRADE_SIZE_SIGMA)
        };
        let volume = ((shares * volume_mult).round() as i64).max(1);
        let mut lots = || 100 * (1 + (rng.exp1() * 4.0).min(99.0) as i64);
        let (bid_size, ask_size) = (lots(), lots());

        MarketTick {
            symbol: s.symbol.clone(),
            exchange: ex.name.clone(),
            price: price_c as f64 / 100.0,
            bid: bid_c as f64 / 100.0,
            ask: ask_c as f64 / 100.0,
            bid_size,
            ask_size,
            volume,
            side: if buy { values::BUY } else { values::SELL },
            ts,
        }
    }

    fn emit_tick(&mut self, t: MarketTick) {
        match &mut self.jitter {
            Some(j) => {
                let delay = j.delay();
                j.ticks.push(t.ts, delay, t);
            }
            None => self.out.ticks.push(t),
        }
    }

    fn emit_order(&mut self, e: OrderEvent) {
        match &mut self.jitter {
            Some(j) => {
                let delay = j.delay();
                j.orders.push(e.ts, delay, e);
            }
            None => self.out.orders.push(e),
        }
    }

    fn emit_book(&mut self, u: BookUpdate) {
        match &mut self.jitter {
            Some(j) => {
                let delay = j.delay();
                j.books.push(u.ts, delay, u);
            }
            None => self.out.books.push(u),
        }
    }

    #[cfg(test)]
    fn mids(&self) -> Vec<f64> {
        self.symbols.iter().map(|s| s.mid).collect()
    }

    #[cfg(test)]
    fn book_touches(&self) -> Vec<Option<(i64, i64)>> {
        self.symbols.iter().map(|s| s.book.best()).collect()
    }
}
