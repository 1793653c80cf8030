//! Decode benchmark: Confluent-framed Avro `MarketTick` → Arrow.
//!
//! Builds ~1 M framed records (8 symbols, random-walk prices), then measures in
//! the same run, on one thread:
//! (a) `confluent::unframe` + tickflow's `AvroDecoder` → 8192-row record batches;
//! (b) `confluent::unframe` + `apache_avro::from_avro_datum` into `Value`s (the
//!     crate's generic decoding) over the same bytes.
//! and the same records as JSON lines (`ts` as epoch milliseconds, as the
//! simulator writes files), decoded in chunks of 8192 lines:
//! (c) `JsonLinesDecoder` (the flat-record fast path);
//! (d) the same decoder with arrow-json alone (`without_fast_path`), the
//!     reference; the two must give equal batches.
//! Each is repeated several times; the best run counts. Run with
//! `cargo bench -p tickflow-worker --bench decode`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use tickflow_worker::codec::{
    AvroDecoder, AvroEncoder, BuiltinAvroSchema, JsonLinesDecoder, SourceTable, confluent,
};

const RECORDS: usize = 1 << 20;
const BATCH_ROWS: usize = 8192;
const SCHEMA_ID: u32 = 1;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 53) as f64
    }
}

/// Framed messages laid out back to back, as a consumer's fetch buffer holds
/// them, with their end offsets, and the same records as JSON lines.
fn build_messages() -> (Vec<u8>, Vec<usize>, Vec<String>) {
    let t = SourceTable::MarketTicks;
    let symbols = [
        ("AAPL", 189.0),
        ("GOOGL", 141.0),
        ("MSFT", 376.0),
        ("AMZN", 153.0),
        ("TSLA", 248.0),
        ("NVDA", 495.0),
        ("META", 353.0),
        ("NFLX", 486.0),
    ];
    let exchanges = ["NASDAQ", "NYSE", "ARCA", "BATS", "IEX"];
    let mut prices: Vec<f64> = symbols.iter().map(|s| s.1).collect();
    let mut rng = Lcg(42);
    let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).expect("encoder");
    let mut framed = Vec::with_capacity(RECORDS * 80);
    let mut ends = Vec::with_capacity(RECORDS);
    let mut body = Vec::new();
    let mut row_ends = Vec::new();
    let mut ts = 1_767_605_400_000i64;
    let mut json = Vec::with_capacity(RECORDS);
    for start in (0..RECORDS).step_by(BATCH_ROWS) {
        let n = BATCH_ROWS.min(RECORDS - start);
        let (mut sym, mut exch, mut price, mut bid, mut ask) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut bid_size, mut ask_size, mut volume, mut side, mut tss) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let s = (rng.next() % 8) as usize;
            prices[s] *= 1.0 + (rng.unit() - 0.5) * 0.0004;
            let p = (prices[s] * 100.0).round() / 100.0;
            let spread = 0.01 * (1 + rng.next() % 3) as f64;
            sym.push(symbols[s].0);
            exch.push(exchanges[(rng.next() % 5) as usize]);
            price.push(p);
            bid.push(p - spread / 2.0);
            ask.push(p + spread / 2.0);
            bid_size.push(100 * (1 + (rng.next() % 20) as i64));
            ask_size.push(100 * (1 + (rng.next() % 20) as i64));
            volume.push(1 + (rng.next() % 2000) as i64);
            side.push(if rng.next().is_multiple_of(2) {
                "buy"
            } else {
                "sell"
            });
            ts += (rng.next() % 3) as i64;
            tss.push(ts);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sym)),
            Arc::new(StringArray::from(exch)),
            Arc::new(Float64Array::from(price)),
            Arc::new(Float64Array::from(bid)),
            Arc::new(Float64Array::from(ask)),
            Arc::new(Int64Array::from(bid_size)),
            Arc::new(Int64Array::from(ask_size)),
            Arc::new(Int64Array::from(volume)),
            Arc::new(StringArray::from(side)),
            Arc::new(TimestampMillisecondArray::from(tss)),
        ];
        let batch = RecordBatch::try_new(t.arrow_schema(), cols).expect("batch");
        json.extend(json_lines(&batch));
        body.clear();
        row_ends.clear();
        enc.encode_batch(&batch, &mut body, &mut row_ends)
            .expect("encode");
        let mut at = 0;
        for &end in &row_ends {
            confluent::frame(SCHEMA_ID, &body[at..end], &mut framed);
            ends.push(framed.len());
            at = end;
        }
    }
    (framed, ends, json)
}

/// A tick batch as the simulator writes JSON lines (`ts` in epoch ms).
fn json_lines(batch: &RecordBatch) -> Vec<String> {
    let text = |i: usize| batch.column(i).as_string::<i32>();
    let float = |i: usize| batch.column(i).as_primitive::<Float64Type>();
    let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let ts = batch.column(9).as_primitive::<TimestampMillisecondType>();
    (0..batch.num_rows())
        .map(|r| {
            format!(
                r#"{{"symbol":"{}","exchange":"{}","price":{:?},"bid":{:?},"ask":{:?},"bid_size":{},"ask_size":{},"volume":{},"side":"{}","ts":{}}}"#,
                text(0).value(r),
                text(1).value(r),
                float(2).value(r),
                float(3).value(r),
                float(4).value(r),
                int(5).value(r),
                int(6).value(r),
                int(7).value(r),
                text(8).value(r),
                ts.value(r),
            )
        })
        .collect()
}

/// (c)/(d): JSON lines in chunks of `BATCH_ROWS` → Arrow. Returns rows.
fn run_json(dec: &mut JsonLinesDecoder, lines: &[(u64, &str)]) -> usize {
    let mut rows = 0;
    for chunk in lines.chunks(BATCH_ROWS) {
        let (batch, bad) = dec.decode(chunk);
        assert!(bad.is_empty());
        rows += black_box(batch).map_or(0, |b| b.num_rows());
    }
    rows
}

fn messages<'a>(framed: &'a [u8], ends: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut start = 0;
    ends.iter().map(move |&end| {
        let m = &framed[start..end];
        start = end;
        m
    })
}

/// (a) tickflow: unframe + AvroDecoder → Arrow batches. Returns rows decoded.
fn run_ours(dec: &mut AvroDecoder, framed: &[u8], ends: &[usize]) -> usize {
    let mut rows = 0;
    for msg in messages(framed, ends) {
        let (id, body) = confluent::unframe(msg).expect("framed");
        debug_assert_eq!(id, SCHEMA_ID);
        dec.decode(body).expect("valid record");
        if dec.len() == BATCH_ROWS {
            let batch = dec.finish();
            rows += black_box(batch).num_rows();
        }
    }
    if !dec.is_empty() {
        rows += black_box(dec.finish()).num_rows();
    }
    rows
}

/// (b) apache-avro: unframe + from_avro_datum into a `Value` per record.
fn run_apache(schema: &apache_avro::Schema, framed: &[u8], ends: &[usize]) -> usize {
    let mut rows = 0;
    for msg in messages(framed, ends) {
        let (_, mut body) = confluent::unframe(msg).expect("framed");
        let value = apache_avro::from_avro_datum(schema, &mut body, None).expect("valid record");
        black_box(value);
        rows += 1;
    }
    rows
}

fn best_of(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut rows = 0;
    for _ in 0..runs {
        let start = Instant::now();
        rows = f();
        best = best.min(start.elapsed());
    }
    (best, rows)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // nothing special — either way just run.
    let t = SourceTable::MarketTicks;
    let (framed, ends, json) = build_messages();
    let n = ends.len();
    println!(
        "decode benchmark: {n} Confluent-framed MarketTick records, {:.1} bytes/record on average, \
         {BATCH_ROWS}-row batches, one thread",
        framed.len() as f64 / n as f64
    );

    // Check once that both decoders agree on the data.
    let mut dec = AvroDecoder::new(t.avro_schema()).expect("decoder");
    let first = messages(&framed, &ends).next().expect("messages");
    dec.decode(confluent::unframe(first).expect("framed").1)
        .expect("decode");
    let batch = dec.finish();
    let value =
        apache_avro::from_avro_datum(t.avro_schema(), &mut &first[5..], None).expect("apache");
    if let apache_avro::types::Value::Record(fields) = &value {
        let price = batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("price");
        assert_eq!(
            fields[2].1,
            apache_avro::types::Value::Double(price.value(0))
        );
    }

    let (ours, rows_a) = best_of(7, || run_ours(&mut dec, &framed, &ends));
    let (apache, rows_b) = best_of(3, || run_apache(t.avro_schema(), &framed, &ends));
    assert_eq!(rows_a, n);
    assert_eq!(rows_b, n);

    let lines: Vec<(u64, &str)> = json
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.as_str()))
        .collect();
    let mut fast = JsonLinesDecoder::new(t.arrow_schema()).expect("json decoder");
    let mut arrow_json = JsonLinesDecoder::without_fast_path(t.arrow_schema()).expect("json");
    for chunk in lines.chunks(BATCH_ROWS).take(4) {
        assert_eq!(fast.decode(chunk), arrow_json.decode(chunk), "same rows");
    }
    let (json_fast, rows_c) = best_of(5, || run_json(&mut fast, &lines));
    let (json_arrow, rows_d) = best_of(3, || run_json(&mut arrow_json, &lines));
    assert_eq!((rows_c, rows_d), (n, n));

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (ra, rb) = (rate(ours), rate(apache));
    let ratio = ra / rb;
    println!();
    let row =
        |name: &str, time: &str, rate: &str| println!("| {name:<43} | {time:>10} | {rate:>18} |");
    row("decoder", "best run", "records/s per core");
    println!("|{:-<45}|{:-<12}|{:-<20}|", "", "", "");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let m = |r: f64| format!("{:.2} M", r / 1e6);
    row(
        "(a) tickflow unframe + AvroDecoder -> Arrow",
        &ms(ours),
        &m(ra),
    );
    row(
        "(b) unframe + apache-avro from_avro_datum",
        &ms(apache),
        &m(rb),
    );
    row(
        "(c) JSON lines, JsonLinesDecoder (fast path)",
        &ms(json_fast),
        &m(rate(json_fast)),
    );
    row(
        "(d) JSON lines, arrow-json alone",
        &ms(json_arrow),
        &m(rate(json_arrow)),
    );
    println!();
    println!("ratio (a)/(b): {ratio:.1}x");
    println!(
        "ratio (c)/(d): {:.1}x",
        json_arrow.as_secs_f64() / json_fast.as_secs_f64()
    );
    println!(
        "targets: >= 10 M records/s per core: {}; >= 3x apache-avro: {}",
        if ra >= 10e6 { "met" } else { "NOT met" },
        if ratio >= 3.0 { "met" } else { "NOT met" }
    );
}
