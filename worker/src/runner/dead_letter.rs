//! The one dead-letter type: a record a source could not decode, or a row
//! the engine refused (event time out of bounds, an expression that failed
//! on it), with everything needed to report it, count it and write it out.
//! It is never silently dropped.

use arrow::array::RecordBatch;

use crate::engine::Rejected;

use super::RunError;

/// Where a Kafka record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// A malformed input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The source table it was read for.
    pub table: String,
    /// Where it came from, for people: `market-ticks.jsonl:17`,
    /// `market-ticks/0@42`.
    pub location: String,
    /// Stable short code for counters and headers (`bad-magic`,
    /// `invalid-json`, `invalid-utf8`, …).
    pub reason: &'static str,
    /// What exactly was wrong.
    pub error: String,
    pub key: Option<Vec<u8>>,
    /// The record as read.
    pub value: Vec<u8>,
    /// Set for Kafka records (dead-letter headers name them).
    pub kafka: Option<KafkaOrigin>,
}

/// One dead letter per row the engine refused; the value is the row as a
/// JSON object (the columns of its source table).
pub fn from_rejected(rejected: Vec<Rejected>) -> Result<Vec<DeadLetter>, RunError> {
    let mut letters = Vec::new();
    for r in rejected {
        let location = match &r.stream {
            Some(stream) => format!("stream {stream}"),
            None => format!("table {}", r.source),
        };
        for value in rows_as_json(&r.rows)? {
            letters.push(DeadLetter {
                table: r.source.clone(),
                location: location.clone(),
                reason: r.reason.code(),
                error: r.error.clone(),
                key: None,
                value,
                kafka: None,
            });
        }
    }
    Ok(letters)
}

/// Each row of `rows` as one JSON object.
fn rows_as_json(rows: &RecordBatch) -> Result<Vec<Vec<u8>>, RunError> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer
        .write(rows)
        .and_then(|_| writer.finish())
        .map_err(|e| RunError::Engine(e.into()))?;
    Ok(writer
        .into_inner()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}
