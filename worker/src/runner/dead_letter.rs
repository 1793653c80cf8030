//! The one dead-letter type: a record a source could not decode, with
//! everything needed to report it, count it and write it out. It is never
//! silently dropped.

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
