//! Rows that used to stop a query: event times at the ends of time or far
//! in the future, and rows an expression fails on. Each run keeps going;
//! its results equal DataFusion's batch answer over the good rows alone,
//! and every bad row is handed back with its reason (the run loop sends
//! them to the dead letters).

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::Int64Type;
use common::*;
use tickflow_worker::codec::SourceTable;
use tickflow_worker::engine::{
    Catalog, EngineConfig, OutputKind, Pipeline, RejectReason, Rejected, StreamOutput,
};

const JITTER_MS: i64 = 800;

fn config() -> EngineConfig {
    EngineConfig {
        allowed_lateness: Duration::from_secs(1),
        idle_timeout: None,
        ..EngineConfig::default()
    }
}

/// Runs `sql` over `chunks`, returning results, late rows and refused rows.
fn run(sql: &str, chunks: &[RecordBatch]) -> (RecordBatch, usize, Vec<Rejected>) {
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config()).unwrap();
    let mut out: Vec<StreamOutput> = Vec::new();
    let mut rejected = Vec::new();
    for c in chunks {
        p.push("market_ticks", 0, c, &mut out).unwrap();
        rejected.extend(p.take_rejected());
    }
    p.finish_partition("market_ticks", 0, &mut out).unwrap();
    rejected.extend(p.take_rejected());
    let late = out
        .iter()
        .filter(|o| o.kind == OutputKind::Late)
        .map(|o| o.rows.num_rows())
        .sum();
    let schema = p.streams()[0].output_schema.clone();
    let rows = concat_batches(
        &schema,
        out.iter()
            .filter(|o| o.kind != OutputKind::Late)
            .map(|o| &o.rows),
    )
    .unwrap();
    (rows, late, rejected)
}

fn ticks() -> RecordBatch {
    source_batch(&market_data(20_000, JITTER_MS), SourceTable::MarketTicks)
}

/// `rows` with their event times replaced.
fn with_ts(rows: &RecordBatch, ts: &[i64]) -> RecordBatch {
    let i = rows.schema().index_of("ts").unwrap();
    let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
    cols[i] = Arc::new(TimestampMillisecondArray::from(ts.to_vec()));
    RecordBatch::try_new(rows.schema(), cols).unwrap()
}

fn reference(sql: &str, input: &RecordBatch) -> RecordBatch {
    let window = window_of(sql);
    datafusion_batch(
        "market_ticks",
        assign_windows(input, window, "symbol"),
        &batch_sql(sql),
    )
}

fn rejected_rows(r: &[Rejected], reason: RejectReason) -> usize {
    r.iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.rows.num_rows())
        .sum()
}

#[test]
fn event_times_at_the_ends_of_time_are_refused_and_the_rest_is_exact() {
    let sql = "CREATE STREAM bars AS SELECT symbol, COUNT(*) AS n, SUM(volume) AS v \
               FROM market_ticks GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);";
    let input = ticks();
    let far_future = tickflow_worker::clock::now_ms() + 10 * 365 * 86_400_000;
    let hostile = with_ts(
        &input.slice(0, 6),
        &[
            i64::MAX,
            i64::MAX - 1,
            far_future,
            -5,
            i64::MIN,
            i64::MIN + 1,
        ],
    );
    // Hostile rows in the middle of the stream, where a far-future one
    // used to move the watermark on for good.
    let mut chunks = chunks(&input, 4096);
    chunks.insert(2, hostile);
    let (actual, late, rejected) = run(sql, &chunks);

    assert_eq!(late, 0, "no good row became late");
    assert_eq!(
        rejected_rows(&rejected, RejectReason::EventTimeTooFarAhead),
        3
    );
    assert_eq!(rejected_rows(&rejected, RejectReason::EventTimeTooEarly), 3);
    assert!(rejected.iter().all(|r| r.stream.is_none()));
    assert!(
        rejected
            .iter()
            .any(|r| r.error.contains("more than 1h ahead")),
        "{rejected:?}"
    );
    let expected = reference(sql, &input);
    assert!(expected.num_rows() > 10);
    assert_same_rows("bars", &actual, &expected, 1e-9);
}

#[test]
fn a_tighter_bound_refuses_more_and_a_looser_one_admits_what_it_allows() {
    let sql = "CREATE STREAM all_ticks AS SELECT symbol, ts FROM market_ticks;";
    let input = ticks();
    let newest = input
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .values()
        .iter()
        .copied()
        .max()
        .unwrap();
    let now = tickflow_worker::clock::now_ms();
    // 30 minutes ahead of the wall clock: inside the default hour.
    let ahead = with_ts(&input.slice(0, 1), &[now + 30 * 60_000]);
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &config()).unwrap();
    let mut out = Vec::new();
    p.push("market_ticks", 0, &input, &mut out).unwrap();
    p.push("market_ticks", 0, &ahead, &mut out).unwrap();
    assert!(p.take_rejected().is_empty());
    assert!(p.max_event_time("market_ticks").unwrap() > newest);

    let strict = EngineConfig {
        event_time_bounds: tickflow_worker::engine::EventTimeBounds {
            min_ms: newest - 1000,
            max_ahead: Duration::from_secs(60),
        },
        ..config()
    };
    let mut p = Pipeline::new(sql, &Catalog::builtin(), &strict).unwrap();
    let mut out = Vec::new();
    p.push("market_ticks", 0, &input, &mut out).unwrap();
    p.push("market_ticks", 0, &ahead, &mut out).unwrap();
    let r = p.take_rejected();
    let early = rejected_rows(&r, RejectReason::EventTimeTooEarly);
    let ahead_n = rejected_rows(&r, RejectReason::EventTimeTooFarAhead);
    assert_eq!(ahead_n, 1);
    let kept: usize = out.iter().map(|o| o.rows.num_rows()).sum();
    assert_eq!(
        kept + early,
        input.num_rows(),
        "every row is a result or refused"
    );
    assert_eq!(p.rejected_rows("market_ticks"), (early + ahead_n) as u64);
}

/// `volume % 7 = 0` rows fail `volume / (volume % 7)` (integer division by
/// zero); rows where `volume % 13 = 0` fail a CAST.
fn failing_rows(input: &RecordBatch) -> (RecordBatch, usize) {
    let volume = input
        .column_by_name("volume")
        .unwrap()
        .as_primitive::<Int64Type>();
    let good: arrow::array::BooleanArray = volume
        .iter()
        .map(|v| v.map(|v| v % 7 != 0 && v % 13 != 0))
        .collect();
    let bad = good.len() - good.true_count();
    (filter_record_batch(input, &good).unwrap(), bad)
}

#[test]
fn rows_an_expression_fails_on_are_refused_and_the_rest_is_exact() {
    let input = ticks();
    let (good_input, bad) = failing_rows(&input);
    assert!(bad > 100, "the data has rows that fail ({bad})");
    let expr =
        "volume / (volume % 7) + CAST(CASE WHEN volume % 13 = 0 THEN 'x' ELSE '1' END AS BIGINT)";
    for sql in [
        format!(
            "CREATE STREAM s AS SELECT symbol, {expr} AS r, ts FROM market_ticks WHERE price > 0;"
        ),
        format!(
            "CREATE STREAM s AS SELECT symbol, SUM({expr}) AS r, COUNT(*) AS n FROM market_ticks \
             GROUP BY symbol, TUMBLE(ts, INTERVAL '5' SECOND);"
        ),
        format!(
            "CREATE STREAM s AS SELECT symbol, COUNT(*) AS n FROM market_ticks WHERE {expr} > 0 \
             GROUP BY symbol, HOP(ts, INTERVAL '5' SECOND, INTERVAL '20' SECOND);"
        ),
        format!(
            "CREATE STREAM s AS SELECT symbol, MAX({expr}) AS r, COUNT(*) AS n FROM market_ticks \
             GROUP BY symbol, SESSION(ts, INTERVAL '10' SECOND);"
        ),
        // OVER: refused at arrival, so the frames hold only good rows.
        format!(
            "CREATE STREAM s AS SELECT symbol, ts, SUM({expr}) OVER (PARTITION BY symbol ORDER BY ts \
             RANGE BETWEEN INTERVAL '1' SECOND PRECEDING AND CURRENT ROW) AS r FROM market_ticks;"
        ),
    ] {
        let (actual, late, rejected) = run(&sql, &chunks(&input, 4096));
        assert_eq!(late, 0, "{sql}");
        assert_eq!(
            rejected_rows(&rejected, RejectReason::Evaluation),
            bad,
            "{sql}: every failing row is refused, once"
        );
        assert!(
            rejected.iter().all(|r| r.stream.as_deref() == Some("s")
                && (r.error.contains("Divide by zero") || r.error.contains("Cannot cast"))),
            "{sql}: {:?}",
            rejected.first().map(|r| &r.error)
        );
        let expected = reference(&sql, &good_input);
        assert!(expected.num_rows() > 0);
        assert_same_rows(&sql, &actual, &expected, 1e-9);
    }
}

/// An OVER stream evaluates its SELECT list when the watermark releases a
/// row, not when it arrives: rows failing there are refused too, never
/// lost, and the others all come out.
#[test]
fn rows_an_over_select_list_fails_on_at_release_are_refused_not_lost() {
    let input = ticks();
    let (_, bad) = failing_rows(&input);
    let expr =
        "volume / (volume % 7) + CAST(CASE WHEN volume % 13 = 0 THEN 'x' ELSE '1' END AS BIGINT)";
    let sql = format!(
        "CREATE STREAM s AS SELECT symbol, ts, {expr} AS r, \
         price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS d FROM market_ticks;"
    );
    let (actual, late, rejected) = run(&sql, &chunks(&input, 4096));
    assert_eq!(late, 0);
    assert_eq!(rejected_rows(&rejected, RejectReason::Evaluation), bad);
    assert_eq!(
        actual.num_rows() + bad,
        input.num_rows(),
        "every row is a result or refused"
    );
    // A dead letter is the whole row, also the columns the query never reads.
    for r in &rejected {
        for column in ["exchange", "bid", "side"] {
            let values = r.rows.column_by_name(column).expect("source column");
            assert_eq!(values.null_count(), 0, "{column} of a refused row");
        }
    }
}
