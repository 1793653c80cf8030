//! Market events: the disturbances a trading desk's alerts watch for.
//!
//! - **Price jumps.** A symbol's mid moves by [`MarketEvents::jump_size`] at
//!   once, toward its starting price, so prices stay in range over long runs.
//! - **Volume bursts.** For [`MarketEvents::burst_ms`] one symbol's trades
//!   are [`MarketEvents::burst_volume`] times as large.
//! - **Order sweeps.** For [`MarketEvents::sweep_ms`] one trader-facing side
//!   of one symbol gets extra, larger orders: the order flow turns one-sided.
//! - **Venue dislocations.** For [`MarketEvents::dislocation_ms`] one
//!   exchange quotes one symbol [`MarketEvents::dislocation_bps`] off the
//!   others: a cross-venue price difference an arbitrage desk would act on.
//!
//! Each kind recurs at exponential intervals with its mean, the first after
//! half of it, so every kind shows within the first minute on the defaults.
//! Draws come from their own random stream: the schedule does not disturb
//! the other streams' draws.

use super::rng::SimRng;

/// How often and how strongly each kind of event happens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MarketEvents {
    /// Mean event time between price jumps (any symbol).
    pub jump_every_ms: i64,
    /// Relative size of a jump (0.06: 6 %).
    pub jump_size: f64,
    /// Mean event time between volume bursts.
    pub burst_every_ms: i64,
    pub burst_ms: i64,
    /// Trade-size multiplier during a burst.
    pub burst_volume: f64,
    /// Mean event time between order sweeps.
    pub sweep_every_ms: i64,
    pub sweep_ms: i64,
    /// Chance per tick of the swept symbol that a sweep order comes with it.
    pub sweep_orders_per_tick: f64,
    /// Size multiplier of sweep orders.
    pub sweep_size: i64,
    /// Mean event time between venue dislocations.
    pub dislocation_every_ms: i64,
    pub dislocation_ms: i64,
    /// How far the dislocated venue quotes off the others, in basis points.
    pub dislocation_bps: f64,
}

impl Default for MarketEvents {
    fn default() -> Self {
        Self {
            jump_every_ms: 20_000,
            jump_size: 0.06,
            burst_every_ms: 15_000,
            burst_ms: 1_500,
            burst_volume: 8.0,
            sweep_every_ms: 30_000,
            sweep_ms: 15_000,
            sweep_orders_per_tick: 0.3,
            sweep_size: 5,
            dislocation_every_ms: 10_000,
            dislocation_ms: 3_000,
            dislocation_bps: 25.0,
        }
    }
}

impl MarketEvents {
    /// Why the settings cannot drive a simulation, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let intervals = [
            ("jump_every_ms", self.jump_every_ms),
            ("burst_every_ms", self.burst_every_ms),
            ("sweep_every_ms", self.sweep_every_ms),
            ("dislocation_every_ms", self.dislocation_every_ms),
        ];
        if let Some((name, _)) = intervals.iter().find(|(_, v)| *v <= 0) {
            return Some(format!("market events: {name} must be positive"));
        }
        let durations = [
            ("burst_ms", self.burst_ms),
            ("sweep_ms", self.sweep_ms),
            ("dislocation_ms", self.dislocation_ms),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, v)| *v < 0) {
            return Some(format!("market events: {name} must not be negative"));
        }
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        let sane = finite(self.jump_size)
            && self.jump_size < 0.5
            && finite(self.burst_volume)
            && finite(self.dislocation_bps)
            && (0.0..=1.0).contains(&self.sweep_orders_per_tick)
            && self.sweep_size >= 1;
        if !sane {
            return Some("market events: sizes must be finite, a jump below 50 %, sweep orders per tick in [0, 1]".into());
        }
        None
    }
}

/// An event in progress on one symbol until `until` (exclusive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Active {
    pub symbol: usize,
    pub until: i64,
}

/// The schedule and the events in progress.
pub(crate) struct EventClock {
    config: MarketEvents,
    rng: SimRng,
    next_jump: i64,
    next_burst: i64,
    next_sweep: i64,
    next_dislocation: i64,
    pub burst: Option<Active>,
    /// The sweep and its side (`true`: buy).
    pub sweep: Option<(Active, bool)>,
    /// The dislocation, its venue and its signed offset (relative).
    pub dislocation: Option<(Active, usize, f64)>,
}

/// What happens at one tick.
#[derive(Default)]
pub(crate) struct Due {
    /// A price jump: symbol and the sign of the move toward its start.
    pub jump: Option<usize>,
}

impl EventClock {
    pub fn new(config: MarketEvents, seed: u64, start: i64) -> Self {
        Self {
            next_jump: start + config.jump_every_ms / 2,
            next_burst: start + config.burst_every_ms / 2,
            next_sweep: start + config.sweep_every_ms / 2,
            next_dislocation: start + config.dislocation_every_ms / 2,
            rng: SimRng::new(seed, 4),
            config,
            burst: None,
            sweep: None,
            dislocation: None,
        }
    }

    pub fn config(&self) -> &MarketEvents {
        &self.config
    }

    fn interval(rng: &mut SimRng, mean: i64) -> i64 {
        1 + (rng.exp1() * mean as f64).min(20.0 * mean as f64) as i64
    }

    /// Starts and ends events at event time `ts`, for a universe of
    /// `symbols` symbols on `venues` exchanges.
    pub fn advance(&mut self, ts: i64, symbols: usize, venues: usize) -> Due {
        let mut due = Due::default();
        let rng = &mut self.rng;
        let c = &self.config;
        let pick = |rng: &mut SimRng, n: usize| rng.below(n as u64) as usize;
        if ts >= self.next_jump {
            due.jump = Some(pick(rng, symbols));
            self.next_jump = ts + Self::interval(rng, c.jump_every_ms);
        }
        if self.burst.is_some_and(|a| ts >= a.until) {
            self.burst = None;
        }
        if ts >= self.next_burst {
            self.burst = Some(Active {
                symbol: pick(rng, symbols),
                until: ts + c.burst_ms,
            });
            self.next_burst = ts + Self::interval(rng, c.burst_every_ms);
        }
        if self.sweep.is_some_and(|(a, _)| ts >= a.until) {
            self.sweep = None;
        }
        if ts >= self.next_sweep {
            let active = Active {
                symbol: pick(rng, symbols),
                until: ts + c.sweep_ms,
            };
            self.sweep = Some((active, rng.chance(0.5)));
            self.next_sweep = ts + Self::interval(rng, c.sweep_every_ms);
        }
        if self.dislocation.is_some_and(|(a, _, _)| ts >= a.until) {
            self.dislocation = None;
        }
        if ts >= self.next_dislocation {
            let active = Active {
                symbol: pick(rng, symbols),
                until: ts + c.dislocation_ms,
            };
            let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
            self.dislocation = Some((active, pick(rng, venues), sign * c.dislocation_bps * 1e-4));
            self.next_dislocation = ts + Self::interval(rng, c.dislocation_every_ms);
        }
        due
    }

    /// Trade-size multiplier of `symbol` now.
    pub fn volume_multiplier(&self, symbol: usize) -> f64 {
        match self.burst {
            Some(a) if a.symbol == symbol => self.config.burst_volume,
            _ => 1.0,
        }
    }

    /// Quote offset of `venue` for `symbol` now (relative).
    pub fn quote_offset(&self, symbol: usize, venue: usize) -> f64 {
        match self.dislocation {
            Some((a, v, offset)) if a.symbol == symbol && v == venue => offset,
            _ => 0.0,
        }
    }

    /// Whether a sweep order comes with this tick of `symbol`, and its side.
    pub fn sweep_order(&mut self, symbol: usize) -> Option<bool> {
        let (a, buy) = self.sweep?;
        (a.symbol == symbol && self.rng.chance(self.config.sweep_orders_per_tick)).then_some(buy)
    }
}
