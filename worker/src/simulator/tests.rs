use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};

use super::*;
use crate::codec::schema::SourceTable;

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ..SimConfig::default()
    }
}

/// Runs `total` ticks in calls of the cycled `chunks` sizes, then flushes.
fn run_split(config: SimConfig, total: usize, chunks: &[usize]) -> (SimOutput, i64, u64) {
    let mut sim = Simulator::new(config);
    let mut out = SimOutput::default();
    let mut done = 0;
    for &c in chunks.iter().cycle() {
        if done == total {
            break;
        }
        let c = c.min(total - done);
        out.append(sim.next_batch(c));
        done += c;
    }
    let (t, n) = (sim.event_time_ms(), sim.ticks_generated());
    out.append(sim.flush());
    (out, t, n)
}

fn cents(x: f64) -> i64 {
    let c = (x * 100.0).round();
    assert!(
        (x * 100.0 - c).abs() < 1e-6,
        "{x} is not a whole number of cents"
    );
    c as i64
}

#[test]
fn same_seed_gives_identical_output() {
    let a = generate(config(7), 5000);
    let b = generate(config(7), 5000);
    assert_eq!(a, b);
    let c = generate(config(8), 5000);
    assert_ne!(a.ticks, c.ticks);
}

#[test]
fn output_is_independent_of_batch_split() {
    for jitter in [0, 250] {
        let cfg = SimConfig {
            max_jitter_ms: jitter,
            burst: Some(BurstConfig {
                every_ms: 3000,
                duration_ms: 500,
                ..BurstConfig::default()
            }),
            ..config(11)
        };
        let whole = run_split(cfg.clone(), 10_000, &[10_000]);
        for chunks in [&[1usize][..], &[1, 7, 1000], &[3, 250, 999, 2]] {
            let split = run_split(cfg.clone(), 10_000, chunks);
            assert_eq!(whole.0.ticks.len(), split.0.ticks.len());
            assert!(whole.0 == split.0, "jitter {jitter}, chunks {chunks:?}");
            assert_eq!((whole.1, whole.2), (split.1, split.2));
        }
        assert_eq!(whole.0.ticks.len(), 10_000);
        assert_eq!(whole.2, 10_000);
    }
}

#[test]
fn without_jitter_ts_is_strictly_increasing_per_symbol() {
    for tps in [1000.0, 50_000.0, 1e7] {
        let cfg = SimConfig {
            ticks_per_second: tps,
            burst: Some(BurstConfig::default()),
            ..config(3)
        };
        let start = cfg.start_time_ms;
        let mut sim = Simulator::new(cfg);
        let out = sim.next_batch(20_000);
        assert_eq!(out.ticks.len(), 20_000);
        assert_eq!(sim.buffered(), 0);
        let mut last: HashMap<&str, i64> = HashMap::new();
        for t in &out.ticks {
            assert!(t.ts >= start);
            if let Some(&prev) = last.get(&*t.symbol) {
                assert!(
                    t.ts > prev,
                    "{} ts {} after {prev} (tps {tps})",
                    t.symbol,
                    t.ts
                );
            }
            last.insert(&t.symbol, t.ts);
        }
        // Every stream is in event-time order without jitter.
        assert!(out.ticks.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(out.orders.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(out.books.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(
            sim.event_time_ms(),
            out.ticks.iter().map(|t| t.ts).max().unwrap()
        );
    }
}

#[test]
fn event_time_follows_the_configured_rate() {
    for tps in [200.0, 1000.0, 4000.0] {
        let cfg = SimConfig {
            ticks_per_second: tps,
            ..config(5)
        };
        let start = cfg.start_time_ms;
        let mut sim = Simulator::new(cfg);
        assert_eq!(sim.event_time_ms(), start);
        sim.next_batch(20_000);
        let secs = (sim.event_time_ms() - start) as f64 / 1000.0;
        let expected = 20_000.0 / tps;
        assert!(
            (secs / expected - 1.0).abs() < 0.05,
            "{tps}/s: {secs} s of event time, expected {expected}"
        );
    }
}

/// Max over the earlier emitted events minus each event's ts.
fn max_lateness(ts: impl Iterator<Item = i64>) -> (i64, usize) {
    let (mut max_seen, mut worst, mut disordered) = (i64::MIN, 0, 0);
    for t in ts {
        if t < max_seen {
            disordered += 1;
            worst = worst.max(max_seen - t);
        }
        max_seen = max_seen.max(t);
    }
    (worst, disordered)
}

fn sorted_debug<T: std::fmt::Debug>(v: &[T]) -> Vec<String> {
    let mut s: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    s.sort();
    s
}

#[test]
fn jitter_is_bounded_and_only_reorders() {
    let plain = generate(config(9), 20_000);
    for jitter in [1, 40, 1000] {
        let cfg = SimConfig {
            max_jitter_ms: jitter,
            ..config(9)
        };
        let mut sim = Simulator::new(cfg);
        let mut out = SimOutput::default();
        for _ in 0..40 {
            out.append(sim.next_batch(500));
        }
        assert!(sim.buffered() > 0);
        out.append(sim.flush());
        assert_eq!(sim.buffered(), 0);

        let (t, tn) = max_lateness(out.ticks.iter().map(|e| e.ts));
        let (o, on) = max_lateness(out.orders.iter().map(|e| e.ts));
        let (b, bn) = max_lateness(out.books.iter().map(|e| e.ts));
        assert!(
            t <= jitter && o <= jitter && b <= jitter,
            "{t} {o} {b} > {jitter}"
        );
        assert!(
            tn > 0 && on > 0 && bn > 0,
            "jitter {jitter} reordered nothing"
        );
        if jitter >= 40 {
            assert!(t > jitter / 2, "lateness {t} far below the bound {jitter}");
        }
        // Same events as without jitter, only in another order.
        assert_eq!(sorted_debug(&out.ticks), sorted_debug(&plain.ticks));
        assert_eq!(sorted_debug(&out.orders), sorted_debug(&plain.orders));
        assert_eq!(sorted_debug(&out.books), sorted_debug(&plain.books));
    }
}

#[test]
fn quotes_and_trades_are_consistent() {
    let cfg = SimConfig {
        burst: Some(BurstConfig::default()),
        ..config(21)
    };
    let exchanges: HashSet<&str> = cfg.exchanges.iter().map(String::as_str).collect();
    let out = generate(cfg.clone(), 50_000);
    let mut seen_ex = HashSet::new();
    let mut spread_bps: HashMap<&str, (f64, usize)> = HashMap::new();
    let mut buys = 0;
    for t in &out.ticks {
        let (bid, ask, price) = (cents(t.bid), cents(t.ask), cents(t.price));
        assert!(bid >= 1 && bid < ask, "{t:?}");
        assert!(t.bid < t.ask && t.ask - t.bid >= 0.01 - 1e-9, "{t:?}");
        assert!(t.bid <= t.price && t.price <= t.ask, "{t:?}");
        assert!(bid <= price && price <= ask);
        assert!(t.bid_size > 0 && t.bid_size % 100 == 0, "{t:?}");
        assert!(t.ask_size > 0 && t.ask_size % 100 == 0, "{t:?}");
        assert!(t.volume >= 1);
        assert!(t.side == "buy" || t.side == "sell");
        buys += (t.side == "buy") as usize;
        assert!(exchanges.contains(&*t.exchange));
        seen_ex.insert(t.exchange.clone());
        let mid = (t.bid + t.ask) / 2.0;
        let bps = (t.ask - t.bid) / mid * 1e4;
        assert!(bps < 25.0, "spread of {bps} bps: {t:?}");
        let e = spread_bps.entry(&t.symbol).or_default();
        e.0 += bps;
        e.1 += 1;
    }
    assert_eq!(seen_ex.len(), exchanges.len());
    let avg = |s: &str| spread_bps[s].0 / spread_bps[s].1 as f64;
    assert!(avg("TSLA") > avg("AAPL") && avg("NVDA") > avg("MSFT"));
    assert!(
        (1.0..8.0).contains(&avg("AAPL")),
        "AAPL {} bps",
        avg("AAPL")
    );
    let buy_share = buys as f64 / out.ticks.len() as f64;
    assert!((0.45..0.55).contains(&buy_share), "{buy_share}");
}

#[test]
fn exchanges_quote_slightly_different_prices_around_the_mid() {
    let mut sim = Simulator::new(config(4));
    let names = sim.config().symbols.clone();
    let mut offsets: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for _ in 0..40_000 {
        let t = sim.next_batch(1).ticks.pop().unwrap();
        let i = names.iter().position(|s| *s.symbol == *t.symbol).unwrap();
        let mid = sim.mids()[i];
        let quote_mid = (t.bid + t.ask) / 2.0;
        let bps = (quote_mid / mid - 1.0) * 1e4;
        assert!(bps.abs() < 5.0, "{t:?} vs mid {mid}");
        let e = offsets.entry(t.exchange.to_string()).or_default();
        e.0 += bps;
        e.1 += 1;
    }
    let avg: Vec<f64> = offsets.values().map(|(s, n)| s / *n as f64).collect();
    assert_eq!(avg.len(), 4);
    // Distinct venues, all within a bp of the common mid.
    assert!(avg.iter().all(|a| a.abs() < 1.0), "{offsets:?}");
    let spread =
        avg.iter().cloned().fold(f64::MIN, f64::max) - avg.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.2, "{offsets:?}");
    // The first venue publishes most.
    assert!(offsets["NASDAQ"].1 > offsets["BATS"].1);
}

#[test]
fn order_life_cycles_are_consistent() {
    let out = generate(config(13), 60_000);
    let ratio = out.orders.len() as f64 / out.ticks.len() as f64;
    assert!((0.2..0.5).contains(&ratio), "{ratio} order events per tick");

    let mut by_order: BTreeMap<&str, Vec<&OrderEvent>> = BTreeMap::new();
    for e in &out.orders {
        by_order.entry(&e.order_id).or_default().push(e);
    }
    let mut client_ids = HashSet::new();
    let mut statuses: HashMap<&str, usize> = HashMap::new();
    let mut traders = HashSet::new();
    for (id, events) in &by_order {
        assert!(id.starts_with("ORD-"));
        let first = events[0];
        assert_eq!(first.status, "new", "{id} starts with {}", first.status);
        assert_eq!(first.filled_quantity, 0);
        assert!(
            client_ids.insert(first.client_order_id.clone()),
            "dup client id"
        );
        traders.insert(first.trader_id.clone());
        assert!(first.quantity > 0 && first.quantity % 100 == 0);
        match first.order_type {
            "market" => assert!(first.price.is_none()),
            "limit" => {
                let p = first.price.expect("limit price");
                cents(p);
            }
            other => panic!("order type {other}"),
        }
        assert!(first.side == "buy" || first.side == "sell");
        let mut prev = first;
        for (k, e) in events.iter().enumerate() {
            // Fixed order attributes.
            assert_eq!(
                (
                    &e.client_order_id,
                    &e.trader_id,
                    &e.symbol,
                    e.side,
                    e.order_type,
                    e.quantity,
                    e.price
                ),
                (
                    &first.client_order_id,
                    &first.trader_id,
                    &first.symbol,
                    first.side,
                    first.order_type,
                    first.quantity,
                    first.price
                )
            );
            *statuses.entry(e.status).or_default() += 1;
            assert!(e.filled_quantity <= e.quantity && e.filled_quantity % 100 == 0);
            if k == 0 {
                continue;
            }
            assert!(
                !prev.is_terminal(),
                "{id}: {} after {}",
                e.status,
                prev.status
            );
            assert!(e.ts > prev.ts, "{id}: not later in event time");
            assert!(e.filled_quantity >= prev.filled_quantity);
            match e.status {
                "partially_filled" => {
                    assert!(e.filled_quantity > prev.filled_quantity);
                    assert!(e.filled_quantity < e.quantity);
                }
                "filled" => assert_eq!(e.filled_quantity, e.quantity),
                "cancelled" => assert!(e.filled_quantity < e.quantity),
                "rejected" => {
                    assert_eq!(k, 1);
                    assert_eq!(e.filled_quantity, 0);
                }
                other => panic!("{id}: status {other} after new"),
            }
            prev = e;
        }
    }
    for s in ["new", "partially_filled", "filled", "cancelled", "rejected"] {
        assert!(statuses.get(s).copied().unwrap_or(0) > 0, "no {s} events");
    }
    assert!(traders.len() > 1 && traders.len() <= TRADERS);
    // Orders come from every symbol.
    let syms: HashSet<&str> = out.orders.iter().map(|e| &*e.symbol).collect();
    assert_eq!(syms.len(), 8);
}

#[test]
fn book_updates_replay_to_a_consistent_book() {
    let mut sim = Simulator::new(config(17));
    let out = sim.next_batch(40_000);
    let ratio = out.books.len() as f64 / out.ticks.len() as f64;
    assert!((1.0..2.5).contains(&ratio), "{ratio} book updates per tick");

    #[derive(Default)]
    struct Sides {
        bids: BTreeMap<i64, i64>,
        asks: BTreeMap<i64, i64>,
    }
    let mut books: HashMap<&str, Sides> = HashMap::new();
    let mut actions: HashMap<&str, usize> = HashMap::new();
    for u in &out.books {
        *actions.entry(u.action).or_default() += 1;
        assert!((0..BOOK_DEPTH as i32).contains(&u.level), "{u:?}");
        let price = cents(u.price);
        let book = books.entry(&u.symbol).or_default();
        let is_bid = match u.side {
            "bid" => true,
            "ask" => false,
            other => panic!("side {other}"),
        };
        let side = if is_bid {
            &mut book.bids
        } else {
            &mut book.asks
        };
        // Rank of a price: bids best = highest, asks best = lowest.
        let rank = |side: &BTreeMap<i64, i64>| {
            if is_bid {
                side.range(price + 1..).count()
            } else {
                side.range(..price).count()
            }
        };
        match u.action {
            "add" => {
                assert!(u.quantity > 0 && u.quantity % 100 == 0, "{u:?}");
                assert!(
                    side.insert(price, u.quantity).is_none(),
                    "add of a level: {u:?}"
                );
                assert_eq!(rank(side) as i32, u.level, "{u:?}");
            }
            "update" => {
                assert!(u.quantity > 0 && u.quantity % 100 == 0, "{u:?}");
                assert!(
                    side.insert(price, u.quantity).is_some(),
                    "update of nothing: {u:?}"
                );
                assert_eq!(rank(side) as i32, u.level, "{u:?}");
            }
            "delete" => {
                assert_eq!(u.quantity, 0);
                assert_eq!(rank(side) as i32, u.level, "{u:?}");
                assert!(side.remove(&price).is_some(), "delete of nothing: {u:?}");
            }
            other => panic!("action {other}"),
        }
        assert!(side.len() <= BOOK_DEPTH);
        if let (Some((&bb, _)), Some((&ba, _))) =
            (book.bids.last_key_value(), book.asks.first_key_value())
        {
            assert!(bb < ba, "crossed book after {u:?}");
        }
    }
    assert_eq!(books.len(), 8);
    for a in ["add", "update", "delete"] {
        assert!(actions[a] > 100, "few {a} updates: {actions:?}");
    }
    // The replayed book is the simulator's own book.
    for (s, touch) in sim.config().symbols.iter().zip(sim.book_touches()) {
        let b = &books[s.symbol.as_str()];
        let replayed = (
            *b.bids.last_key_value().unwrap().0,
            *b.asks.first_key_value().unwrap().0,
        );
        assert_eq!(Some(replayed), touch, "{}", s.symbol);
        assert_eq!((b.bids.len(), b.asks.len()), (BOOK_DEPTH, BOOK_DEPTH));
    }
    // The book sits around the traded prices.
    let last_tick = out.ticks.iter().rfind(|t| &*t.symbol == "AAPL").unwrap();
    let b = &books["AAPL"];
    let bb = *b.bids.last_key_value().unwrap().0 as f64 / 100.0;
    assert!((bb / last_tick.price - 1.0).abs() < 1e-3);
}

#[test]
fn whole_universe_trades_with_some_large_trades() {
    let out = generate(SimConfig::default(), 50_000);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &out.ticks {
        *count.entry(&t.symbol).or_default() += 1;
    }
    for s in [
        "AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "NFLX",
    ] {
        assert!(count[s] > 2000, "{s}: {}", count[s]);
    }
    assert_eq!(count.len(), 8);
    assert!(count["TSLA"] > count["MSFT"]);
    let books: HashSet<&str> = out.books.iter().map(|b| &*b.symbol).collect();
    assert_eq!(books.len(), 8);

    let large = out.ticks.iter().filter(|t| t.volume > 500).count();
    let share = large as f64 / out.ticks.len() as f64;
    assert!((0.01..0.10).contains(&share), "{share} of trades above 500");
    let large_syms: HashSet<&str> = out
        .ticks
        .iter()
        .filter(|t| t.volume > 500)
        .map(|t| &*t.symbol)
        .collect();
    assert_eq!(large_syms.len(), 8);
    // Average trade size follows the spec.
    let nvda: Vec<i64> = out
        .ticks
        .iter()
        .filter(|t| &*t.symbol == "NVDA")
        .map(|t| t.volume)
        .collect();
    let mean = nvda.iter().sum::<i64>() as f64 / nvda.len() as f64;
    assert!((200.0..330.0).contains(&mean), "NVDA mean trade {mean}");
}

#[test]
fn mid_follows_gbm_with_the_symbol_volatility() {
    let mut sim = Simulator::new(config(23));
    let specs = sim.config().symbols.clone();
    let mut mids = sim.mids();
    let mut last_ts: Vec<Option<i64>> = vec![None; specs.len()];
    let mut sums = vec![(0.0f64, 0usize); specs.len()];
    for _ in 0..200_000 {
        let t = sim.next_batch(1).ticks.pop().unwrap();
        let i = specs.iter().position(|s| *s.symbol == *t.symbol).unwrap();
        let now = sim.mids();
        if let Some(prev) = last_ts[i] {
            let dt = (t.ts - prev) as f64 / MS_PER_TRADING_YEAR;
            let z = (now[i] / mids[i]).ln() / dt.sqrt();
            sums[i].0 += z * z;
            sums[i].1 += 1;
        }
        last_ts[i] = Some(t.ts);
        mids = now;
    }
    for (s, (sq, n)) in specs.iter().zip(sums) {
        let vol = (sq / n as f64).sqrt();
        assert!(
            (vol / s.annual_volatility - 1.0).abs() < 0.05,
            "{}: realised {vol}, spec {}",
            s.symbol,
            s.annual_volatility
        );
    }
}

#[test]
fn burst_mode_spikes_rate_and_volume() {
    let burst = BurstConfig {
        every_ms: 10_000,
        duration_ms: 2_000,
        rate_multiplier: 5.0,
        volume_multiplier: 3.0,
    };
    let cfg = SimConfig {
        burst: Some(burst.clone()),
        ..config(31)
    };
    let start = cfg.start_time_ms;
    let out = generate(cfg, 150_000);
    let (mut n_in, mut n_out, mut v_in, mut v_out) = (0usize, 0usize, 0i64, 0i64);
    let last = out.ticks.last().unwrap().ts - start;
    let whole_periods = last / burst.every_ms * burst.every_ms;
    for t in out.ticks.iter().filter(|t| t.ts - start < whole_periods) {
        if burst.active_at(t.ts - start) {
            n_in += 1;
            v_in += t.volume;
        } else {
            n_out += 1;
            v_out += t.volume;
        }
    }
    let periods = (whole_periods / burst.every_ms) as f64;
    // The first period has no burst.
    let ms_in = (periods - 1.0) * burst.duration_ms as f64;
    let ms_out = whole_periods as f64 - ms_in;
    let rate_ratio = (n_in as f64 / ms_in) / (n_out as f64 / ms_out);
    let vol_ratio = (v_in as f64 / n_in as f64) / (v_out as f64 / n_out as f64);
    assert!((4.0..6.0).contains(&rate_ratio), "rate ×{rate_ratio}");
    assert!((2.5..3.5).contains(&vol_ratio), "volume ×{vol_ratio}");
    assert!(!burst.active_at(0) && !burst.active_at(9_999));
    assert!(burst.active_at(10_000) && burst.active_at(21_999) && !burst.active_at(22_000));
}

#[test]
fn batches_match_the_source_table_schemas() {
    let out = generate(config(2), 3000);
    let [ticks, orders, books] = out.to_batches();
    for (batch, table) in [
        (&ticks, SourceTable::MarketTicks),
        (&orders, SourceTable::OrderEvents),
        (&books, SourceTable::BookUpdates),
    ] {
        assert_eq!(batch.schema(), table.arrow_schema(), "{table:?}");
    }
    assert_eq!(ticks.num_rows(), out.ticks.len());
    assert_eq!(orders.num_rows(), out.orders.len());
    assert_eq!(books.num_rows(), out.books.len());

    let col = |b: &RecordBatch, name: &str| b.column_by_name(name).unwrap().clone();
    let price = col(&ticks, "price");
    let price = price.as_primitive::<Float64Type>();
    let bid = col(&ticks, "bid");
    let bid = bid.as_primitive::<Float64Type>();
    let volume = col(&ticks, "volume");
    let volume = volume.as_primitive::<Int64Type>();
    let ask_size = col(&ticks, "ask_size");
    let ask_size = ask_size.as_primitive::<Int64Type>();
    let ts = col(&ticks, "ts");
    let ts = ts.as_primitive::<TimestampMillisecondType>();
    let exchange = col(&ticks, "exchange");
    let exchange = exchange.as_string::<i32>();
    let side = col(&ticks, "side");
    let side = side.as_string::<i32>();
    for (i, t) in out.ticks.iter().enumerate() {
        assert_eq!(price.value(i), t.price);
        assert_eq!(bid.value(i), t.bid);
        assert_eq!(volume.value(i), t.volume);
        assert_eq!(ask_size.value(i), t.ask_size);
        assert_eq!(ts.value(i), t.ts);
        assert_eq!(exchange.value(i), &*t.exchange);
        assert_eq!(side.value(i), t.side);
    }

    let oprice = col(&orders, "price");
    let market = out.orders.iter().filter(|o| o.price.is_none()).count();
    assert!(market > 0);
    assert_eq!(oprice.null_count(), market);
    let status = col(&orders, "status");
    let status = status.as_string::<i32>();
    let filled = col(&orders, "filled_quantity");
    let filled = filled.as_primitive::<Int64Type>();
    let client = col(&orders, "client_order_id");
    let client = client.as_string::<i32>();
    for (i, o) in out.orders.iter().enumerate() {
        assert_eq!(status.value(i), o.status);
        assert_eq!(filled.value(i), o.filled_quantity);
        assert_eq!(client.value(i), &*o.client_order_id);
        assert_eq!(
            oprice.as_primitive::<Float64Type>().is_valid(i),
            o.price.is_some()
        );
    }

    let level = col(&books, "level");
    let level = level.as_primitive::<Int32Type>();
    let action = col(&books, "action");
    let action = action.as_string::<i32>();
    let qty = col(&books, "quantity");
    let qty = qty.as_primitive::<Int64Type>();
    for (i, b) in out.books.iter().enumerate() {
        assert_eq!(level.value(i), b.level);
        assert_eq!(action.value(i), b.action);
        assert_eq!(qty.value(i), b.quantity);
    }

    // Empty inputs give empty batches with the same schemas.
    let empty = SimOutput::default().to_batches();
    for (b, table) in empty.iter().zip(SourceTable::ALL) {
        assert_eq!(b.num_rows(), 0);
        assert_eq!(b.schema(), table.arrow_schema());
    }
}

#[test]
fn records_serialize_with_the_avro_field_names() {
    let out = generate(config(2), 200);
    let check = |v: serde_json::Value, table: SourceTable| {
        let obj = v.as_object().unwrap();
        let schema = table.arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{table:?}");
        assert!(obj["ts"].is_i64());
    };
    check(
        serde_json::to_value(&out.ticks[0]).unwrap(),
        SourceTable::MarketTicks,
    );
    let market = out.orders.iter().find(|o| o.price.is_none()).unwrap();
    let v = serde_json::to_value(market).unwrap();
    assert!(v["price"].is_null());
    check(v, SourceTable::OrderEvents);
    check(
        serde_json::to_value(&out.books[0]).unwrap(),
        SourceTable::BookUpdates,
    );
}

#[test]
fn default_config_and_universe() {
    let cfg = SimConfig::default();
    let open = chrono::DateTime::parse_from_rfc3339("2026-01-05T14:30:00Z").unwrap();
    assert_eq!(cfg.start_time_ms, open.timestamp_millis());
    assert_eq!(
        (cfg.seed, cfg.ticks_per_second, cfg.max_jitter_ms),
        (42, 1000.0, 0)
    );
    assert_eq!(cfg.exchanges, ["NASDAQ", "NYSE", "ARCA", "BATS"]);
    assert!(cfg.burst.is_none());
    assert!(cfg.validate().is_ok());
    let u = default_universe();
    let names: Vec<&str> = u.iter().map(|s| s.symbol.as_str()).collect();
    assert_eq!(
        names,
        [
            "AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "NFLX"
        ]
    );
    let vol = |s: &str| u.iter().find(|x| x.symbol == s).unwrap().annual_volatility;
    for s in ["AAPL", "GOOGL", "MSFT", "AMZN", "META", "NFLX"] {
        assert!(vol("TSLA") > vol(s) && vol("NVDA") > vol(s));
    }
    assert_eq!(SymbolSpec::for_symbol("tsla"), u[4]);
    let x = SymbolSpec::for_symbol("XYZ");
    assert_eq!(x, SymbolSpec::for_symbol("XYZ"));
    assert!((20.0..500.0).contains(&x.start_price));
}

#[test]
fn invalid_configs_are_rejected() {
    let bad = [
        SimConfig {
            symbols: vec![],
            ..SimConfig::default()
        },
        SimConfig {
            ticks_per_second: 0.0,
            ..SimConfig::default()
        },
        SimConfig {
            ticks_per_second: f64::NAN,
            ..SimConfig::default()
        },
        SimConfig {
            max_jitter_ms: -1,
            ..SimConfig::default()
        },
        SimConfig {
            exchanges: vec![],
            ..SimConfig::default()
        },
        SimConfig {
            symbols: vec![
                SymbolSpec::for_symbol("AAPL"),
                SymbolSpec::for_symbol("AAPL"),
            ],
            ..SimConfig::default()
        },
        SimConfig {
            symbols: vec![SymbolSpec::new("X", -1.0, 0.2, 100.0)],
            ..SimConfig::default()
        },
        SimConfig {
            symbols: vec![SymbolSpec::new("X", 10.0, 0.2, 0.0)],
            ..SimConfig::default()
        },
        SimConfig {
            burst: Some(BurstConfig {
                duration_ms: 0,
                ..BurstConfig::default()
            }),
            ..SimConfig::default()
        },
        SimConfig {
            burst: Some(BurstConfig {
                every_ms: 1000,
                duration_ms: 2000,
                ..BurstConfig::default()
            }),
            ..SimConfig::default()
        },
    ];
    for cfg in bad {
        let err = Simulator::try_new(cfg.clone()).err().expect("rejected");
        assert!(
            err.to_string().starts_with("invalid simulator config"),
            "{err}"
        );
    }
    // A single symbol on a single venue is fine.
    let one = SimConfig {
        symbols: vec![SymbolSpec::for_symbol("ZZZ")],
        exchanges: vec!["IEX".into()],
        ..SimConfig::default()
    };
    let out = generate(one, 2000);
    assert!(
        out.ticks
            .iter()
            .all(|t| &*t.exchange == "IEX" && &*t.symbol == "ZZZ")
    );
    assert!(out.ticks.windows(2).all(|w| w[0].ts < w[1].ts));
}

/// `cargo test --release -p tickflow-worker --lib simulator::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "prints a throughput figure"]
fn throughput() {
    for jitter in [0, 100] {
        let mut sim = Simulator::new(SimConfig {
            max_jitter_ms: jitter,
            ..SimConfig::default()
        });
        let n = 2_000_000;
        let t0 = std::time::Instant::now();
        let mut events = 0;
        for _ in 0..n / 10_000 {
            events += sim.next_batch(10_000).len();
        }
        let gen_secs = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let out = sim.next_batch(200_000);
        let batches = out.to_batches();
        let arrow_secs = t1.elapsed().as_secs_f64();
        println!(
            "jitter {jitter}: {:.2} M ticks/s ({:.2} M events/s); generate+to_arrow of 200k ticks: {:.1} ms ({} rows)",
            n as f64 / gen_secs / 1e6,
            events as f64 / gen_secs / 1e6,
            arrow_secs * 1e3,
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        );
    }
}
