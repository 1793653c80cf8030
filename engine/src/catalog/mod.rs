//! The catalog: what a source table is.
//!
//! One [`SourceDef`] per table a query can read: its SQL name, Arrow schema,
//! event-time column, key columns, default topic and value format. The three
//! market tables are built-in entries ([`SourceTable`]), derived from the
//! Avro schemas in `schemas/*.avsc`; nothing else in tickflow spells their
//! topics, keys or columns. The planner resolves `FROM` against a
//! [`Catalog`], the worker binds sources by catalog entry, and the operator
//! checks SQL with the same catalog. User-defined sources (`CREATE TABLE …
//! WITH (…)`, read by [`ddl`](crate::ddl)) become entries through
//! [`Catalog::register`].
//!
//! Invariant: every entry's event-time column exists and is a timestamp, and
//! its key columns exist ([`Catalog::register`] checks both).

mod avsc;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};

/// Value format of a source's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SourceFormat {
    /// Avro, Confluent-framed on Kafka (schema registry), container files on disk.
    #[default]
    Avro,
    /// JSON objects, one per record (JSON lines on disk).
    Json,
}

/// A table queries can read from.
#[derive(Clone, Debug)]
pub struct SourceDef {
    /// Name in SQL (`market_ticks`).
    pub name: String,
    pub schema: SchemaRef,
    /// Event-time column (`ts`), a timestamp.
    pub event_time: String,
    /// Columns that identify an entity (`symbol`): Kafka message keys, and
    /// the key of rows a stateless stream passes through.
    pub key_columns: Vec<String>,
    /// Topic read when a query does not bind the table elsewhere; also the
    /// base name of replay files (`market-ticks.jsonl`).
    pub topic: String,
    pub format: SourceFormat,
    /// The Avro schema (JSON) records are written with, when the catalog
    /// knows it (built-in tables); otherwise the registry supplies it.
    pub avro_schema: Option<Arc<str>>,
    /// How far the watermark trails the newest event time (`WATERMARK FOR
    /// ts AS ts - INTERVAL …`); `None`: the engine's default lateness.
    pub watermark_delay: Option<Duration>,
    /// Line of the `CREATE TABLE` that declared it; `None` for a built-in
    /// table. A declared table's format is its own; a built-in table's may
    /// be overridden where it is bound (`--input-format`).
    pub declared_at: Option<usize>,
    /// Rows are upserts and deletions by `key_columns` (an updating stream
    /// read by a later one), not appended facts. Such an input has no
    /// event-time column.
    pub changelog: bool,
}

impl SourceDef {
    /// Index of the event-time column.
    pub fn event_time_index(&self) -> usize {
        self.schema
            .index_of(&self.event_time)
            .expect("event-time column checked at registration")
    }
}

/// Why a source cannot be a catalog entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("source `{table}`: event-time column `{column}` {problem}")]
    EventTime {
        table: String,
        column: String,
        problem: String,
    },
    #[error("source `{table}`: key column `{column}` does not exist")]
    KeyColumn { table: String, column: String },
}

/// The source tables a query can read, by name (case-insensitive, as SQL
/// identifiers are).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sources: BTreeMap<String, SourceDef>,
}

impl Catalog {
    /// A catalog without entries.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in market tables.
    pub fn builtin() -> Self {
        let mut c = Self::empty();
        for t in SourceTable::ALL {
            c.register(t.def()).expect("built-in tables are valid");
        }
        c
    }

    /// Adds `def`, replacing an entry of the same name (a query may redeclare
    /// a built-in table).
    pub fn register(&mut self, def: SourceDef) -> Result<(), CatalogError> {
        let event_time = |problem: &str| CatalogError::EventTime {
            table: def.name.clone(),
            column: def.event_time.clone(),
            problem: problem.to_string(),
        };
        match def.schema.field_with_name(&def.event_time) {
            _ if def.changelog => {}
            Err(_) => return Err(event_time("does not exist")),
            Ok(f) if !matches!(f.data_type(), DataType::Timestamp(..)) => {
                return Err(event_time(&format!(
                    "is {}, not a timestamp",
                    f.data_type()
                )));
            }
            Ok(_) => {}
        }
        if let Some(k) = def
            .key_columns
            .iter()
            .find(|k| def.schema.index_of(k).is_err())
        {
            return Err(CatalogError::KeyColumn {
                table: def.name.clone(),
                column: k.clone(),
            });
        }
        self.sources.insert(def.name.to_ascii_lowercase(), def);
        Ok(())
    }

    /// The entry of table `name`.
    pub fn get(&self, name: &str) -> Option<&SourceDef> {
        self.sources.get(&name.to_ascii_lowercase())
    }

    /// Every entry, by name.
    pub fn sources(&self) -> impl Iterator<Item = &SourceDef> {
        self.sources.values()
    }

    /// Table names, for messages ("known: …").
    pub fn names(&self) -> Vec<&str> {
        self.sources.values().map(|s| s.name.as_str()).collect()
    }
}

/// Default output topic of a stream: its name with `_` → `-` (`ohlc_5s` →
/// `ohlc-5s`), as the source topics are spelled.
pub fn output_topic(stream: &str) -> String {
    stream.replace('_', "-")
}

/// The built-in market-data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceTable {
    MarketTicks,
    OrderEvents,
    BookUpdates,
}

impl SourceTable {
    pub const ALL: [SourceTable; 3] = [Self::MarketTicks, Self::OrderEvents, Self::BookUpdates];

    /// Name used in SQL (`FROM market_ticks`).
    pub fn table_name(self) -> &'static str {
        match self {
            Self::MarketTicks => "market_ticks",
            Self::OrderEvents => "order_events",
            Self::BookUpdates => "book_updates",
        }
    }

    /// Default topic, also the base name of replay files (`market-ticks.jsonl`).
    pub fn topic(self) -> &'static str {
        match self {
            Self::MarketTicks => "market-ticks",
            Self::OrderEvents => "order-events",
            Self::BookUpdates => "book-updates",
        }
    }

    /// The embedded `.avsc` text, the single source of truth for the table's
    /// columns (registered with the schema registry by the producer).
    pub fn avsc(self) -> &'static str {
        match self {
            Self::MarketTicks => include_str!("../../../schemas/market_tick.avsc"),
            Self::OrderEvents => include_str!("../../../schemas/order_event.avsc"),
            Self::BookUpdates => include_str!("../../../schemas/book_update.avsc"),
        }
    }

    pub fn from_table_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.table_name().eq_ignore_ascii_case(name))
    }

    pub fn from_topic(topic: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.topic() == topic)
    }

    /// Arrow schema of the table, derived from its `.avsc` once.
    pub fn arrow_schema(self) -> SchemaRef {
        static CACHE: OnceLock<Vec<SchemaRef>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|t| avsc::record_to_arrow(t.avsc()).expect("embedded .avsc maps to Arrow"))
                .collect()
        });
        Arc::clone(&all[self as usize])
    }

    /// The table's catalog entry: event time `ts`, keyed by `symbol`.
    pub fn def(self) -> SourceDef {
        SourceDef {
            name: self.table_name().to_string(),
            schema: self.arrow_schema(),
            event_time: "ts".to_string(),
            key_columns: vec!["symbol".to_string()],
            topic: self.topic().to_string(),
            format: SourceFormat::Avro,
            avro_schema: Some(Arc::from(self.avsc())),
            watermark_delay: None,
            declared_at: None,
            changelog: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn builtin_tables_come_from_their_avro_schemas() {
        let c = Catalog::builtin();
        assert_eq!(c.names(), ["book_updates", "market_ticks", "order_events"]);
        let ticks = c.get("MARKET_TICKS").expect("lookup ignores case");
        assert_eq!(ticks.topic, "market-ticks");
        assert_eq!(ticks.key_columns, ["symbol"]);
        assert_eq!(
            ticks.schema.field_with_name("ts").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        let orders = SourceTable::OrderEvents.arrow_schema();
        assert!(orders.field_with_name("price").unwrap().is_nullable());
        assert!(!orders.field_with_name("quantity").unwrap().is_nullable());
        for t in SourceTable::ALL {
            assert_eq!(SourceTable::from_table_name(t.table_name()), Some(t));
            assert_eq!(SourceTable::from_topic(t.topic()), Some(t));
        }
    }

    #[test]
    fn register_checks_event_time_and_keys_and_may_redeclare() {
        let schema = |ts: DataType| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("ts", ts, false),
            ]))
        };
        let def = |ts: DataType, keys: &[&str]| SourceDef {
            name: "market_ticks".into(),
            schema: schema(ts),
            event_time: "ts".into(),
            key_columns: keys.iter().map(|k| k.to_string()).collect(),
            topic: "my-ticks".into(),
            format: SourceFormat::Json,
            avro_schema: None,
            watermark_delay: None,
            declared_at: Some(1),
            changelog: false,
        };
        let mut c = Catalog::builtin();
        assert!(matches!(
            c.register(def(DataType::Int64, &[])),
            Err(CatalogError::EventTime { .. })
        ));
        assert_eq!(
            c.register(def(
                DataType::Timestamp(TimeUnit::Millisecond, None),
                &["nope"]
            )),
            Err(CatalogError::KeyColumn {
                table: "market_ticks".into(),
                column: "nope".into()
            })
        );
        c.register(def(
            DataType::Timestamp(TimeUnit::Millisecond, None),
            &["id"],
        ))
        .unwrap();
        assert_eq!(c.get("market_ticks").unwrap().topic, "my-ticks");
        assert_eq!(c.names().len(), 3);
    }

    #[test]
    fn output_topics_use_dashes() {
        assert_eq!(output_topic("ohlc_5s"), "ohlc-5s");
    }
}
