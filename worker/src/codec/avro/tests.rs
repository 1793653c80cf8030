//! Tests of the Avro codec: round trips of every supported type, byte-level
//! interoperability with `apache_avro` in both directions, schema resolution
//! (defaults, promotions, skipped fields), and malformed or fuzzed bodies,
//! which must be rejected without leaving partial rows behind.
//!
//! [`ticks`] is shared with the other codec tests
//! (`crate::codec::avro::tests::ticks`).

use super::*;
use crate::codec::{BuiltinAvroSchema, SourceTable};
use apache_avro::types::Value;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Field, Schema as ArrowSchema};

use super::encoder::{write_bytes, write_long};
use super::reader::{Raw, read_int, read_long};
use crate::codec::schema::avro_to_arrow;
use crate::codec::{CodecError, DecodeError};
use apache_avro::Schema;
use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use std::sync::Arc;

/// A hand-built MarketTick batch (the simulator is not used here).
pub(crate) fn ticks(n: usize, start_ts: i64) -> RecordBatch {
    let symbols = [
        "AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "NFLX",
    ];
    let exchanges = ["NASDAQ", "NYSE", "ARCA", "BATS"];
    let sym: Vec<&str> = (0..n).map(|i| symbols[i % 8]).collect();
    let exch: Vec<&str> = (0..n).map(|i| exchanges[i % 4]).collect();
    let price: Vec<f64> = (0..n).map(|i| 100.0 + (i % 97) as f64 * 0.25).collect();
    let bid: Vec<f64> = price.iter().map(|p| p - 0.01).collect();
    let ask: Vec<f64> = price.iter().map(|p| p + 0.01).collect();
    let bid_size: Vec<i64> = (0..n).map(|i| 100 * (1 + i as i64 % 9)).collect();
    let ask_size: Vec<i64> = (0..n).map(|i| 100 * (1 + i as i64 % 7)).collect();
    let volume: Vec<i64> = (0..n).map(|i| 1 + (i as i64 * 37) % 1000).collect();
    let side: Vec<&str> = (0..n)
        .map(|i| if i % 3 == 0 { "sell" } else { "buy" })
        .collect();
    let ts: Vec<i64> = (0..n).map(|i| start_ts + i as i64).collect();
    RecordBatch::try_new(
        SourceTable::MarketTicks.arrow_schema(),
        vec![
            Arc::new(StringArray::from(sym)),
            Arc::new(StringArray::from(exch)),
            Arc::new(Float64Array::from(price)),
            Arc::new(Float64Array::from(bid)),
            Arc::new(Float64Array::from(ask)),
            Arc::new(Int64Array::from(bid_size)),
            Arc::new(Int64Array::from(ask_size)),
            Arc::new(Int64Array::from(volume)),
            Arc::new(StringArray::from(side)),
            Arc::new(TimestampMillisecondArray::from(ts)),
        ],
    )
    .unwrap()
}

fn parse(json: &str) -> Schema {
    Schema::parse_str(json).unwrap()
}

const ALL_TYPES: &str = r#"{
  "type": "record", "name": "AllTypes", "namespace": "t",
  "fields": [
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "s", "type": "string"},
    {"name": "by", "type": "bytes"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "tu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "nb", "type": ["null", "boolean"], "default": null},
    {"name": "ni", "type": ["null", "int"], "default": null},
    {"name": "nl", "type": ["null", "long"], "default": null},
    {"name": "nf", "type": ["null", "float"], "default": null},
    {"name": "nd", "type": ["double", "null"], "default": 1.5},
    {"name": "ns", "type": ["null", "string"], "default": null},
    {"name": "nby", "type": ["null", "bytes"], "default": null},
    {"name": "nts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null}
  ]
}"#;

fn all_types_batch() -> RecordBatch {
    let schema = avro_to_arrow(&parse(ALL_TYPES)).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(BooleanArray::from(vec![true, false, true])),
        Arc::new(Int32Array::from(vec![0, -1, i32::MAX])),
        Arc::new(Int64Array::from(vec![i64::MIN, 0, i64::MAX])),
        Arc::new(Float32Array::from(vec![1.5, -0.0, f32::MAX])),
        Arc::new(Float64Array::from(vec![0.1, f64::MIN_POSITIVE, -1e300])),
        Arc::new(StringArray::from(vec!["", "héllo", "日本語 \u{1F600}"])),
        Arc::new(BinaryArray::from(vec![
            &b""[..],
            &[0u8, 255, 1][..],
            &b"xyz"[..],
        ])),
        Arc::new(TimestampMillisecondArray::from(vec![
            1_767_605_400_123,
            -1,
            0,
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            1_767_605_400_123_456,
            1,
            -5,
        ])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(Int32Array::from(vec![None, Some(7), Some(-7)])),
        Arc::new(Int64Array::from(vec![Some(1 << 40), None, None])),
        Arc::new(Float32Array::from(vec![None, Some(2.5), None])),
        Arc::new(Float64Array::from(vec![Some(3.25), None, Some(-1.0)])),
        Arc::new(StringArray::from(vec![Some("x"), None, Some("")])),
        Arc::new(BinaryArray::from(vec![
            None,
            Some(&b"\x00"[..]),
            Some(&b""[..]),
        ])),
        Arc::new(TimestampMillisecondArray::from(vec![None, Some(5), None])),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn encode_rows(enc: &AvroEncoder, batch: &RecordBatch) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    enc.encode_batch(batch, &mut out, &mut ends).unwrap();
    let mut start = 0;
    ends.iter()
        .map(|&e| {
            let row = out[start..e].to_vec();
            start = e;
            row
        })
        .collect()
}

#[test]
fn round_trip_every_type_with_nulls() {
    let avro = parse(ALL_TYPES);
    let batch = all_types_batch();
    let enc = AvroEncoder::new(batch.schema(), &avro).unwrap();
    let mut dec = AvroDecoder::new(&avro).unwrap();
    for row in encode_rows(&enc, &batch) {
        dec.decode(&row).unwrap();
    }
    assert_eq!(dec.len(), 3);
    let out = dec.finish();
    assert_eq!(out, batch);
    assert!(dec.is_empty());
    // encode_row gives the same bytes as encode_batch.
    let mut one = Vec::new();
    enc.encode_row(&batch, 1, &mut one).unwrap();
    assert_eq!(one, encode_rows(&enc, &batch)[1]);
    // A second batch through the same decoder.
    let rows = encode_rows(&enc, &batch);
    dec.decode(&rows[2]).unwrap();
    assert_eq!(dec.finish(), batch.slice(2, 1));
    assert_eq!(dec.finish().num_rows(), 0);
}

#[test]
fn market_ticks_round_trip() {
    let t = SourceTable::MarketTicks;
    let batch = ticks(1000, 1_767_605_400_000);
    let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
    let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
    assert_eq!(dec.schema(), t.arrow_schema());
    let mut out = Vec::new();
    let mut ends = Vec::new();
    enc.encode_batch(&batch, &mut out, &mut ends).unwrap();
    // Records back to back, as in a container block.
    let mut at = 0;
    for &end in &ends {
        let used = dec.decode_one(&out[at..]).unwrap();
        assert_eq!(at + used, end);
        at = end;
    }
    assert_eq!(dec.finish(), batch);
}

/// Expected apache-avro `Value` of one ALL_TYPES row.
fn expected_values(row: usize) -> Vec<(String, Value)> {
    let u = |i: u32, v: Value| Value::Union(i, Box::new(v));
    let null = |i: u32| Value::Union(i, Box::new(Value::Null));
    let rows = [
        vec![
            Value::Boolean(true),
            Value::Int(0),
            Value::Long(i64::MIN),
            Value::Float(1.5),
            Value::Double(0.1),
            Value::String("".into()),
            Value::Bytes(vec![]),
            Value::TimestampMillis(1_767_605_400_123),
            Value::TimestampMicros(1_767_605_400_123_456),
            u(1, Value::Boolean(true)),
            null(0),
            u(1, Value::Long(1 << 40)),
            null(0),
            u(0, Value::Double(3.25)),
            u(1, Value::String("x".into())),
            null(0),
            null(0),
        ],
        vec![
            Value::Boolean(false),
            Value::Int(-1),
            Value::Long(0),
            Value::Float(-0.0),
            Value::Double(f64::MIN_POSITIVE),
            Value::String("héllo".into()),
            Value::Bytes(vec![0, 255, 1]),
            Value::TimestampMillis(-1),
            Value::TimestampMicros(1),
            null(0),
            u(1, Value::Int(7)),
            null(0),
            u(1, Value::Float(2.5)),
            null(1),
            null(0),
            u(1, Value::Bytes(vec![0])),
            u(1, Value::TimestampMillis(5)),
        ],
    ];
    let names = [
        "b", "i", "l", "f", "d", "s", "by", "ts", "tu", "nb", "ni", "nl", "nf", "nd", "ns", "nby",
        "nts",
    ];
    names
        .iter()
        .map(|n| n.to_string())
        .zip(rows[row].clone())
        .collect()
}

#[test]
fn our_bytes_decode_with_apache_avro() {
    let avro = parse(ALL_TYPES);
    let batch = all_types_batch();
    let enc = AvroEncoder::new(batch.schema(), &avro).unwrap();
    let rows = encode_rows(&enc, &batch);
    for (i, row) in rows.iter().enumerate().take(2) {
        let mut reader = &row[..];
        let value = apache_avro::from_avro_datum(&avro, &mut reader, None).unwrap();
        assert!(reader.is_empty(), "apache-avro left bytes in row {i}");
        assert_eq!(value, Value::Record(expected_values(i)), "row {i}");
    }
    // And the source schemas.
    let t = SourceTable::MarketTicks;
    let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
    let mut body = Vec::new();
    enc.encode_row(&ticks(3, 1000), 2, &mut body).unwrap();
    let value = apache_avro::from_avro_datum(t.avro_schema(), &mut &body[..], None).unwrap();
    let Value::Record(fields) = value else {
        panic!("not a record")
    };
    assert_eq!(fields[0], ("symbol".into(), Value::String("MSFT".into())));
    assert_eq!(fields[2], ("price".into(), Value::Double(100.5)));
    assert_eq!(fields[8], ("side".into(), Value::String("buy".into())));
    assert_eq!(fields[9], ("ts".into(), Value::TimestampMillis(1002)));
}

#[test]
fn apache_avro_bytes_decode_with_ours() {
    let avro = parse(ALL_TYPES);
    let mut dec = AvroDecoder::new(&avro).unwrap();
    for row in 0..2 {
        let body = apache_avro::to_avro_datum(&avro, Value::Record(expected_values(row))).unwrap();
        dec.decode(&body).unwrap();
    }
    assert_eq!(dec.finish(), all_types_batch().slice(0, 2));

    // OrderEvent with a null and a non-null price.
    let t = SourceTable::OrderEvents;
    let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
    for (i, price) in [None, Some(101.25)].into_iter().enumerate() {
        let s = |v: &str| Value::String(v.into());
        let record = Value::Record(vec![
            ("order_id".into(), s(&format!("o{i}"))),
            ("client_order_id".into(), s("c")),
            ("trader_id".into(), s("t1")),
            ("symbol".into(), s("AAPL")),
            ("side".into(), s("buy")),
            (
                "order_type".into(),
                s(if price.is_some() { "limit" } else { "market" }),
            ),
            ("quantity".into(), Value::Long(100)),
            (
                "price".into(),
                match price {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(p) => Value::Union(1, Box::new(Value::Double(p))),
                },
            ),
            ("status".into(), s("new")),
            ("filled_quantity".into(), Value::Long(0)),
            (
                "ts".into(),
                Value::TimestampMillis(1_767_605_400_000 + i as i64),
            ),
        ]);
        dec.decode(&apache_avro::to_avro_datum(t.avro_schema(), record).unwrap())
            .unwrap();
    }
    let batch = dec.finish();
    let price = batch
        .column_by_name("price")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert!(price.is_null(0));
    assert_eq!(price.value(1), 101.25);
    assert_eq!(
        batch
            .column_by_name("order_id")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "o1"
    );
}

/// An OrderEvent writer schema from before `filled_quantity` existed,
/// with an extra field of every skippable shape.
const OLD_ORDER: &str = r#"{
  "type": "record", "name": "OrderEvent", "namespace": "io.tickflow.market",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "extra_arr", "type": {"type": "array", "items": "string"}},
    {"name": "client_order_id", "type": "string"},
    {"name": "trader_id", "type": "string"},
    {"name": "extra_map", "type": {"type": "map", "values": ["null", "long"]}},
    {"name": "symbol", "type": "string"},
    {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["buy", "sell"]}},
    {"name": "order_type", "type": "string"},
    {"name": "extra_rec", "type": {"type": "record", "name": "Extra", "fields": [
        {"name": "a", "type": "double"}, {"name": "b", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "c", "type": "boolean"}, {"name": "d", "type": "Side"}]}},
    {"name": "quantity", "type": "int"},
    {"name": "price", "type": ["null", "float"]},
    {"name": "status", "type": "bytes"},
    {"name": "extra_union", "type": ["null", "string", "long"]},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}}
  ]
}"#;

fn old_order(i: i64, price: Option<f32>) -> Value {
    let s = |v: &str| Value::String(v.into());
    Value::Record(vec![
        ("order_id".into(), s(&format!("o{i}"))),
        ("extra_arr".into(), Value::Array(vec![s("a"), s("bb")])),
        ("client_order_id".into(), s("c")),
        ("trader_id".into(), s("t")),
        (
            "extra_map".into(),
            Value::Map(
                [("k".to_string(), Value::Union(1, Box::new(Value::Long(5))))]
                    .into_iter()
                    .collect(),
            ),
        ),
        ("symbol".into(), s("TSLA")),
        ("side".into(), Value::Enum(1, "sell".into())),
        ("order_type".into(), s("limit")),
        (
            "extra_rec".into(),
            Value::Record(vec![
                ("a".into(), Value::Double(1.0)),
                ("b".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
                ("c".into(), Value::Boolean(true)),
                ("d".into(), Value::Enum(0, "buy".into())),
            ]),
        ),
        ("quantity".into(), Value::Int(250)),
        (
            "price".into(),
            match price {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(p) => Value::Union(1, Box::new(Value::Float(p))),
            },
        ),
        ("status".into(), Value::Bytes(b"filled".to_vec())),
        (
            "extra_union".into(),
            Value::Union(2, Box::new(Value::Long(-3))),
        ),
        (
            "ts".into(),
            Value::TimestampMicros(1_767_605_400_123_999 + i),
        ),
    ])
}

#[test]
fn schema_resolution_defaults_promotions_and_skips() {
    let writer = parse(OLD_ORDER);
    let reader = SourceTable::OrderEvents.avro_schema();
    let mut dec = AvroDecoder::with_writer(&writer, reader).unwrap();
    for (i, price) in [(0, Some(99.5f32)), (1, None)] {
        let body = apache_avro::to_avro_datum(&writer, old_order(i, price)).unwrap();
        dec.decode(&body).unwrap();
    }
    let batch = dec.finish();
    assert_eq!(batch.schema(), SourceTable::OrderEvents.arrow_schema());
    assert_eq!(batch.num_rows(), 2);
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    // Reader default for the missing field.
    let filled = col("filled_quantity");
    assert_eq!(filled.as_primitive::<Int64Type>().values(), &[0, 0]);
    // int → long, float → double (nullable), enum → string, bytes → string.
    assert_eq!(col("quantity").as_primitive::<Int64Type>().value(0), 250);
    let price = col("price");
    let price = price.as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!(price.value(0), 99.5);
    assert!(price.is_null(1));
    assert_eq!(col("side").as_string::<i32>().value(0), "sell");
    assert_eq!(col("status").as_string::<i32>().value(1), "filled");
    assert_eq!(col("symbol").as_string::<i32>().value(1), "TSLA");
    assert_eq!(col("order_id").as_string::<i32>().value(1), "o1");
    // timestamp-micros writer → timestamp-millis reader (floor).
    let ts = col("ts");
    let ts = ts.as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.values(), &[1_767_605_400_123, 1_767_605_400_124]);
}

#[test]
fn schema_resolution_numeric_promotions() {
    let writer = parse(
        r#"{"type":"record","name":"P","fields":[
          {"name":"a","type":"int"},{"name":"b","type":"int"},{"name":"c","type":"int"},
          {"name":"d","type":"long"},{"name":"e","type":"long"},{"name":"f","type":"float"},
          {"name":"g","type":"string"},{"name":"h","type":"long"}]}"#,
    );
    let reader = parse(
        r#"{"type":"record","name":"P","fields":[
          {"name":"h","type":["null","long"]},
          {"name":"a","type":"long"},{"name":"b","type":"float"},{"name":"c","type":"double"},
          {"name":"d","type":"float"},{"name":"e","type":"double"},{"name":"f","type":"double"},
          {"name":"g","type":"bytes"},
          {"name":"z","type":"string","default":"zz"},
          {"name":"y","type":["null","int"],"default":null}]}"#,
    );
    let value = Value::Record(vec![
        ("a".into(), Value::Int(-5)),
        ("b".into(), Value::Int(3)),
        ("c".into(), Value::Int(i32::MIN)),
        ("d".into(), Value::Long(1 << 40)),
        ("e".into(), Value::Long(-7)),
        ("f".into(), Value::Float(0.5)),
        ("g".into(), Value::String("é".into())),
        ("h".into(), Value::Long(42)),
    ]);
    let body = apache_avro::to_avro_datum(&writer, value).unwrap();
    let mut dec = AvroDecoder::with_writer(&writer, &reader).unwrap();
    dec.decode(&body).unwrap();
    let b = dec.finish();
    let expected = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            Field::new("h", DataType::Int64, true),
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Float32, false),
            Field::new("c", DataType::Float64, false),
            Field::new("d", DataType::Float32, false),
            Field::new("e", DataType::Float64, false),
            Field::new("f", DataType::Float64, false),
            Field::new("g", DataType::Binary, false),
            Field::new("z", DataType::Utf8, false),
            Field::new("y", DataType::Int32, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![42])),
            Arc::new(Int64Array::from(vec![-5])),
            Arc::new(Float32Array::from(vec![3.0])),
            Arc::new(Float64Array::from(vec![f64::from(i32::MIN)])),
            Arc::new(Float32Array::from(vec![(1u64 << 40) as f32])),
            Arc::new(Float64Array::from(vec![-7.0])),
            Arc::new(Float64Array::from(vec![0.5])),
            Arc::new(BinaryArray::from(vec!["é".as_bytes()])),
            Arc::new(StringArray::from(vec!["zz"])),
            Arc::new(Int32Array::from(vec![None])),
        ],
    )
    .unwrap();
    assert_eq!(b, expected);
}

#[test]
fn schema_resolution_errors_at_construction() {
    let writer = parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"}]}"#);
    // Reader field without default, missing from the writer.
    let reader = parse(
        r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"},{"name":"b","type":"long"}]}"#,
    );
    let err = AvroDecoder::with_writer(&writer, &reader)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`b`") && err.contains("no default"), "{err}");
    // Narrowing is not a promotion.
    let reader = parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"int"}]}"#);
    let err = AvroDecoder::with_writer(&writer, &reader)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`a`"), "{err}");
    let reader = parse(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"string"}]}"#);
    assert!(AvroDecoder::with_writer(&writer, &reader).is_err());
    // Not a record.
    assert!(AvroDecoder::new(&Schema::Long).is_err());
}

#[test]
fn nullable_writer_into_non_null_reader() {
    let writer = parse(
        r#"{"type":"record","name":"P","fields":[{"name":"a","type":["null","double"]},{"name":"s","type":"string"}]}"#,
    );
    let reader = parse(
        r#"{"type":"record","name":"P","fields":[{"name":"a","type":"double"},{"name":"s","type":"string"}]}"#,
    );
    let mut dec = AvroDecoder::with_writer(&writer, &reader).unwrap();
    let rec = |a: Option<f64>, s: &str| {
        let a = match a {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(v) => Value::Union(1, Box::new(Value::Double(v))),
        };
        apache_avro::to_avro_datum(
            &writer,
            Value::Record(vec![("a".into(), a), ("s".into(), Value::String(s.into()))]),
        )
        .unwrap()
    };
    dec.decode(&rec(Some(1.0), "x")).unwrap();
    let err = dec.decode(&rec(None, "y")).unwrap_err();
    assert_eq!(err, DecodeError::NullInNonNullable { field: "a".into() });
    assert_eq!(err.reason(), "null-in-non-nullable");
    dec.decode(&rec(Some(2.0), "z")).unwrap();
    let b = dec.finish();
    assert_eq!(
        b.column(0)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values(),
        &[1.0, 2.0]
    );
    assert_eq!(b.column(1).as_string::<i32>().value(1), "z");
}

fn tick_body(row: usize) -> Vec<u8> {
    let t = SourceTable::MarketTicks;
    let enc = AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
    let mut body = Vec::new();
    enc.encode_row(&ticks(row + 1, 1_767_605_400_000), row, &mut body)
        .unwrap();
    body
}

/// Decodes good, `bad`, good and checks the error and that the batch has
/// exactly the two good rows.
fn check_rejected(bad: &[u8], expected: DecodeError) {
    let t = SourceTable::MarketTicks;
    let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
    dec.decode(&tick_body(0)).unwrap();
    assert_eq!(dec.decode(bad), Err(expected));
    assert_eq!(dec.len(), 1);
    dec.decode(&tick_body(1)).unwrap();
    let batch = dec.finish();
    let all = ticks(2, 1_767_605_400_000);
    assert_eq!(batch, all, "no partial row may survive a bad record");
}

/// A MarketTick body with hand-made field encodings.
fn raw_tick(symbol: &[u8], exchange_len: &[u8], side_tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(symbol);
    b.extend_from_slice(exchange_len);
    b.extend_from_slice(b"NYSE");
    for _ in 0..3 {
        b.extend_from_slice(&100.0f64.to_le_bytes());
    }
    for v in [10, 20, 30] {
        write_long(&mut b, v);
    }
    b.extend_from_slice(side_tail);
    b
}

#[test]
fn malformed_inputs_are_rejected_without_partial_rows() {
    let good = tick_body(0);
    // Every proper prefix is truncated.
    for cut in 0..good.len() {
        let err = {
            let mut dec = AvroDecoder::new(SourceTable::MarketTicks.avro_schema()).unwrap();
            dec.decode(&good[..cut]).unwrap_err()
        };
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "cut {cut}: {err:?}"
        );
    }
    check_rejected(
        &good[..good.len() - 3],
        DecodeError::Truncated { field: "ts".into() },
    );

    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    check_rejected(&long, DecodeError::TrailingBytes(1));

    // Invalid UTF-8 in the symbol.
    let mut sym = vec![];
    write_long(&mut sym, 2);
    sym.extend_from_slice(&[0xff, 0xfe]);
    let bad = raw_tick(&sym, &[8], b"\x06buy\x02");
    check_rejected(
        &bad,
        DecodeError::InvalidUtf8 {
            field: "symbol".into(),
        },
    );

    // Negative length.
    let bad = raw_tick(b"\x02A", &[1], b"");
    check_rejected(
        &bad,
        DecodeError::BadLength {
            field: "exchange".into(),
            len: -1,
        },
    );

    // Length larger than the remaining buffer.
    let mut huge = Vec::new();
    write_long(&mut huge, 1 << 40);
    let bad = raw_tick(b"\x02A", &huge, b"");
    check_rejected(
        &bad,
        DecodeError::Truncated {
            field: "exchange".into(),
        },
    );

    // Overlong varint (11 continuation bytes) and a 10-byte varint whose
    // last byte overflows 64 bits.
    let bad = raw_tick(b"\x02A", &[0xff; 11], b"");
    check_rejected(
        &bad,
        DecodeError::BadVarint {
            field: "exchange".into(),
        },
    );
    let mut ovf = vec![0xff; 9];
    ovf.push(0x02);
    let bad = raw_tick(b"\x02A", &ovf, b"");
    check_rejected(
        &bad,
        DecodeError::BadVarint {
            field: "exchange".into(),
        },
    );
    // Overlong near the end of the buffer (slow varint path).
    let mut tail = good[..good.len() - 6].to_vec();
    tail.extend_from_slice(&[0x80, 0x80, 0x80]);
    check_rejected(&tail, DecodeError::Truncated { field: "ts".into() });

    // Union index out of range (OrderEvent.price).
    let t = SourceTable::OrderEvents;
    let mut dec = AvroDecoder::new(t.avro_schema()).unwrap();
    let mut b = Vec::new();
    for s in ["o", "c", "t", "AAPL", "buy", "limit"] {
        write_bytes(&mut b, s.as_bytes());
    }
    write_long(&mut b, 100);
    let before_union = b.len();
    write_long(&mut b, 5); // union branch 5 of ["null","double"]
    let err = dec.decode(&b).unwrap_err();
    assert_eq!(
        err,
        DecodeError::BadUnionIndex {
            field: "price".into(),
            index: 5
        }
    );
    assert_eq!(err.reason(), "bad-union-index");
    b.truncate(before_union);
    write_long(&mut b, -1);
    assert!(matches!(
        dec.decode(&b),
        Err(DecodeError::BadUnionIndex { index: -1, .. })
    ));
    b.truncate(before_union);
    write_long(&mut b, 0); // null price
    write_bytes(&mut b, b"new");
    write_long(&mut b, 0);
    write_long(&mut b, 1_767_605_400_000);
    dec.decode(&b).unwrap();
    assert_eq!(dec.finish().num_rows(), 1);

    // Bad boolean byte.
    let schema = parse(r#"{"type":"record","name":"B","fields":[{"name":"x","type":"boolean"}]}"#);
    let mut dec = AvroDecoder::new(&schema).unwrap();
    let err = dec.decode(&[2]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::BadBoolean {
            field: "x".into(),
            byte: 2
        }
    );
    assert_eq!(err.reason(), "bad-boolean");
    dec.decode(&[1]).unwrap();
    assert_eq!(dec.finish().num_rows(), 1);

    // Reasons are stable codes.
    assert_eq!(
        DecodeError::Truncated {
            field: String::new()
        }
        .reason(),
        "truncated"
    );
    assert_eq!(
        DecodeError::InvalidUtf8 {
            field: String::new()
        }
        .reason(),
        "invalid-utf8"
    );
    assert_eq!(DecodeError::TrailingBytes(1).reason(), "trailing-bytes");
    assert_eq!(
        DecodeError::UnknownSchemaId(1).reason(),
        "unknown-schema-id"
    );
}

#[test]
fn enum_index_out_of_range() {
    let schema = parse(
        r#"{"type":"record","name":"E","fields":[{"name":"e","type":{"type":"enum","name":"S","symbols":["a","b"]}}]}"#,
    );
    let mut dec = AvroDecoder::new(&schema).unwrap();
    dec.decode(&[2]).unwrap(); // index 1 = "b"
    let err = dec.decode(&[4]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::BadEnumIndex {
            field: "e".into(),
            index: 2
        }
    );
    let b = dec.finish();
    assert_eq!(b.column(0).as_string::<i32>().value(0), "b");
    assert_eq!(b.num_rows(), 1);
}

/// Random corruption of valid records never panics, and every accepted
/// record yields exactly one row.
#[test]
fn fuzzed_bodies_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let avro = parse(ALL_TYPES);
    let enc = AvroEncoder::new(all_types_batch().schema(), &avro).unwrap();
    let rows = encode_rows(&enc, &all_types_batch());
    let mut dec = AvroDecoder::new(&avro).unwrap();
    let writer = parse(OLD_ORDER);
    let mut resolving =
        AvroDecoder::with_writer(&writer, SourceTable::OrderEvents.avro_schema()).unwrap();
    let old = apache_avro::to_avro_datum(&writer, old_order(1, Some(1.0))).unwrap();
    let mut ok = 0;
    let mut ok_resolving = 0;
    // TICKFLOW_FUZZ_ITERS=… runs a longer campaign.
    let iters = std::env::var("TICKFLOW_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for i in 0..iters {
        let base = if i % 2 == 0 { &rows[i % 3] } else { &old };
        let mut b = base.clone();
        for _ in 0..1 + rnd() % 3 {
            let at = (rnd() as usize) % b.len().max(1);
            match rnd() % 3 {
                0 if !b.is_empty() => b[at] = rnd() as u8,
                1 => b.truncate(at),
                _ => b.insert(at.min(b.len()), rnd() as u8),
            }
        }
        if i % 2 == 0 {
            ok += usize::from(dec.decode(&b).is_ok());
        } else {
            ok_resolving += usize::from(resolving.decode(&b).is_ok());
        }
    }
    assert_eq!(dec.len(), ok);
    assert_eq!(dec.finish().num_rows(), ok);
    assert_eq!(resolving.finish().num_rows(), ok_resolving);
}

#[test]
fn encoder_handles_query_output_types() {
    let arrow = Arc::new(ArrowSchema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("tick_count", DataType::UInt64, false),
        Field::new("vwap", DataType::Float64, true),
    ]));
    let avro = crate::codec::arrow_to_avro(&arrow, "ohlc", "io.tickflow.out").unwrap();
    let batch = RecordBatch::try_new(
        arrow.clone(),
        vec![
            Arc::new(StringArray::from(vec!["AAPL", "MSFT"])),
            Arc::new(TimestampMillisecondArray::from(vec![1000, 2000]).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(vec![Some(6_000_000), None])),
            Arc::new(arrow::array::UInt64Array::from(vec![
                3,
                u64::from(u32::MAX) + 1,
            ])),
            Arc::new(Float64Array::from(vec![Some(101.5), None])),
        ],
    )
    .unwrap();
    let enc = AvroEncoder::new(arrow.clone(), &avro).unwrap();
    let rows = encode_rows(&enc, &batch);
    let v = apache_avro::from_avro_datum(&avro, &mut &rows[0][..], None).unwrap();
    assert_eq!(
        v,
        Value::Record(vec![
            ("symbol".into(), Value::String("AAPL".into())),
            ("window_start".into(), Value::TimestampMillis(1000)),
            (
                "window_end".into(),
                Value::Union(1, Box::new(Value::TimestampMicros(6_000_000)))
            ),
            ("tick_count".into(), Value::Long(3)),
            (
                "vwap".into(),
                Value::Union(1, Box::new(Value::Double(101.5)))
            ),
        ])
    );
    // Decoding back gives the Arrow mapping of the Avro schema.
    let mut dec = AvroDecoder::new(&avro).unwrap();
    for r in &rows {
        dec.decode(r).unwrap();
    }
    let back = dec.finish();
    assert_eq!(back.column(3).as_primitive::<Int64Type>().value(1), 1 << 32);
    assert!(back.column(2).is_null(1));
    assert!(back.column(4).is_null(1));

    // Values that do not fit are errors, not silent corruption.
    let big = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![Field::new(
            "n",
            DataType::UInt64,
            false,
        )])),
        vec![Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX]))],
    )
    .unwrap();
    let avro_n = crate::codec::arrow_to_avro(&big.schema(), "N", "").unwrap();
    let enc = AvroEncoder::new(big.schema(), &avro_n).unwrap();
    let mut out = vec![9];
    let err = enc.encode_row(&big, 0, &mut out).unwrap_err();
    assert!(matches!(err, CodecError::Encode { row: 0, .. }), "{err}");
    assert_eq!(out, vec![9], "a failed row leaves nothing behind");
}

#[test]
fn encoder_errors_and_defaults() {
    // Null into a non-nullable Avro field.
    let arrow = Arc::new(ArrowSchema::new(vec![Field::new(
        "a",
        DataType::Int64,
        true,
    )]));
    let avro = parse(
        r#"{"type":"record","name":"R","fields":[
        {"name":"a","type":"long"},
        {"name":"d","type":"string","default":"dflt"},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]},"default":"y"}]}"#,
    );
    let enc = AvroEncoder::new(arrow.clone(), &avro).unwrap();
    let batch = RecordBatch::try_new(
        arrow.clone(),
        vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let err = enc.encode_batch(&batch, &mut out, &mut ends).unwrap_err();
    assert!(
        matches!(&err, CodecError::Encode { field, row: 1, .. } if field == "a"),
        "{err}"
    );
    assert_eq!(ends, vec![out.len()]);
    // Missing Arrow columns are written with the Avro default.
    let v = apache_avro::from_avro_datum(&avro, &mut &out[..], None).unwrap();
    assert_eq!(
        v,
        Value::Record(vec![
            ("a".into(), Value::Long(1)),
            ("d".into(), Value::String("dflt".into())),
            ("e".into(), Value::Enum(1, "y".into())),
        ])
    );
    // A batch of another shape.
    let other = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![Field::new(
            "a",
            DataType::Utf8,
            true,
        )])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    assert!(matches!(
        enc.encode_row(&other, 0, &mut out),
        Err(CodecError::SchemaMismatch(_))
    ));
    // Type mismatch at construction.
    let avro_s = parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#);
    assert!(AvroEncoder::new(arrow.clone(), &avro_s).is_err());
    // Missing column without default.
    let avro_m = parse(r#"{"type":"record","name":"R","fields":[{"name":"zz","type":"long"}]}"#);
    assert!(AvroEncoder::new(arrow, &avro_m).is_err());
    // Unknown enum symbol.
    let arrow = Arc::new(ArrowSchema::new(vec![Field::new(
        "e",
        DataType::Utf8,
        false,
    )]));
    let enc = AvroEncoder::new(arrow.clone(), &avro_with_enum()).unwrap();
    let batch =
        RecordBatch::try_new(arrow, vec![Arc::new(StringArray::from(vec!["x", "nope"]))]).unwrap();
    let mut out = Vec::new();
    enc.encode_row(&batch, 0, &mut out).unwrap();
    assert_eq!(out, vec![0]);
    assert!(enc.encode_row(&batch, 1, &mut out).is_err());
}

fn avro_with_enum() -> Schema {
    parse(
        r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]}}]}"#,
    )
}

#[test]
fn varint_edges() {
    for v in [
        0i64,
        1,
        -1,
        63,
        -64,
        64,
        1 << 20,
        i64::MAX,
        i64::MIN,
        1_767_605_400_000,
    ] {
        let mut b = Vec::new();
        write_long(&mut b, v);
        // Fast path (padded) and slow path (exact length).
        let mut padded = b.clone();
        padded.extend_from_slice(&[0; 10]);
        let mut pos = 0;
        assert_eq!(read_long(&padded, &mut pos).unwrap(), v);
        assert_eq!(pos, b.len());
        let mut pos = 0;
        assert_eq!(read_long(&b, &mut pos).unwrap(), v);
        assert_eq!(pos, b.len());
    }
    let mut pos = 0;
    assert!(matches!(
        read_int(&[0xfe, 0xff, 0xff, 0xff, 0x1f], &mut pos),
        Err(Raw::Varint)
    ));
}
