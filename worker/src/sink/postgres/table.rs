//! A stream's PostgreSQL table and the SQL that fills it (pure: text only).
//!
//! - The target table has the stream's columns with their PostgreSQL types
//!   ([`super::copy::pg_type`]) and, when the stream has a row key (a
//!   windowed aggregate's `window_start` and GROUP BY keys, an updating
//!   stream's key), a primary key on it; or, when a key column may be NULL,
//!   a `UNIQUE NULLS NOT DISTINCT` constraint (a NULL group is a group). An
//!   updating stream without key columns (a global aggregate) is one row.
//! - An epoch's tuples are copied into a temporary staging table with the
//!   same columns, all nullable (a delete carries only its key), plus the
//!   row's order and a delete flag; one merge then applies each key's *last*
//!   change: delete it, or upsert it with `ON CONFLICT … DO UPDATE`. Merging
//!   the same epoch twice leaves the same table: appends are idempotent.
//! - A stream without a row key is copied straight into its table (the
//!   epoch's transaction makes it exactly-once; there is nothing to merge).

use arrow::datatypes::Schema;

use super::copy::pg_type;

/// The staging table's extra columns.
const SEQ: &str = "_tickflow_seq";
const DELETE: &str = "_tickflow_delete";

/// PostgreSQL truncates longer identifiers (with only a NOTICE), which
/// could make two columns one.
const MAX_IDENTIFIER_BYTES: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub pg_type: &'static str,
    pub nullable: bool,
}

/// Where one stream's rows go.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub stream: String,
    /// `schema.table` or `table` (then the connection's search path).
    pub schema: Option<String>,
    pub table: String,
    pub columns: Vec<Column>,
    /// The row key; `None`: rows are appended; empty: the table is one row.
    pub key: Option<Vec<String>>,
    /// The column a TimescaleDB hypertable is partitioned on (a windowed
    /// stream's `window_start`).
    pub time_column: Option<String>,
}

impl TableSpec {
    /// The table `target` (`[schema.]table`) for a stream with these
    /// columns and row key. A key with `window_start` makes the table a
    /// hypertable on it where TimescaleDB is installed.
    pub fn new(
        stream: &str,
        target: &str,
        schema: &Schema,
        key: Option<&[String]>,
    ) -> Result<Self, String> {
        let (db_schema, table) = match target.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, target.to_string()),
        };
        for name in db_schema.iter().chain([&table]) {
            check_identifier(name).map_err(|e| format!("table `{target}`: {e}"))?;
        }
        let mut columns = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            check_identifier(f.name()).map_err(|e| format!("stream `{stream}`: column {e}"))?;
            let pg_type = pg_type(f.data_type()).ok_or_else(|| {
                format!(
                    "stream `{stream}`: column `{}` has type {}, which the PostgreSQL sink cannot write",
                    f.name(),
                    f.data_type()
                )
            })?;
            columns.push(Column {
                name: f.name().clone(),
                pg_type,
                nullable: f.is_nullable(),
            });
        }
        if columns.iter().any(|c| c.name == SEQ || c.name == DELETE) {
            return Err(format!(
                "stream `{stream}`: the column names {SEQ} and {DELETE} are the sink's own"
            ));
        }
        let time_column = key
            .is_some_and(|k| k.iter().any(|c| c == "window_start"))
            .then(|| "window_start".to_string());
        Ok(Self {
            stream: stream.to_string(),
            schema: db_schema,
            table,
            columns,
            key: key.map(<[String]>::to_vec),
            time_column,
        })
    }

    /// The quoted, possibly schema-qualified table name.
    pub fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(&self.table)),
            None => quote(&self.table),
        }
    }

    fn key_nullable(&self) -> bool {
        self.columns
            .iter()
            .any(|c| c.nullable && self.is_key(&c.name))
    }

    fn is_key(&self, column: &str) -> bool {
        self.key
            .as_ref()
            .is_some_and(|k| k.iter().any(|c| c == column))
    }

    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let null = if c.nullable { "" } else { " NOT NULL" };
                format!("{} {}{null}", quote(&c.name), c.pg_type)
            })
            .collect();
        if let Some(key) = self.key.as_ref().filter(|k| !k.is_empty()) {
            let key = quoted_list(key);
            parts.push(match self.key_nullable() {
                false => format!("PRIMARY KEY ({key})"),
                true => format!("UNIQUE NULLS NOT DISTINCT ({key})"),
            });
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified(),
            parts.join(", ")
        )
    }

    /// Makes a windowed stream's table a hypertable (only where the
    /// `timescaledb` extension is installed).
    pub fn hypertable_sql(&self) -> Option<String> {
        let column = self.time_column.as_ref()?;
        Some(format!(
            "SELECT create_hypertable({}, {}, if_not_exists => TRUE, migrate_data => TRUE)",
            literal(&self.qualified()),
            literal(column)
        ))
    }

    /// The staging table of a session: emptied at every commit.
    pub fn create_stage_sql(&self, stage: &str) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote(&c.name), c.pg_type))
            .collect();
        format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}, {SEQ} BIGINT NOT NULL, {DELETE} BOOLEAN NOT NULL) ON COMMIT DELETE ROWS",
            quote(stage),
            columns.join(", ")
        )
    }

    /// Where the epoch's tuples are copied: the staging table, or an
    /// appended table itself.
    pub fn copy_sql(&self, stage: &str) -> String {
        match self.key {
            Some(_) => format!("COPY {} FROM STDIN (FORMAT binary)", quote(stage)),
            None => format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                self.qualified(),
                quoted_list(self.columns.iter().map(|c| &c.name))
            ),
        }
    }

    /// Whether rows go through the staging table (keyed tables).
    pub fn staged(&self) -> bool {
        self.key.is_some()
    }

    /// The statements that apply a staged epoch to the table, in order.
    pub fn merge_sql(&self, stage: &str) -> Vec<String> {
        let stage = quote(stage);
        let all = quoted_list(self.columns.iter().map(|c| &c.name));
        let Some(key_columns) = &self.key else {
            return Vec::new();
        };
        if key_columns.is_empty() {
            // One row: the epoch's last change replaces it.
            return vec![
                format!(
                    "DELETE FROM {} WHERE EXISTS (SELECT 1 FROM {stage})",
                    self.qualified()
                ),
                format!(
                    "INSERT INTO {} ({all}) SELECT {all} FROM (SELECT * FROM {stage} ORDER BY {SEQ} DESC LIMIT 1) AS last WHERE NOT last.{DELETE}",
                    self.qualified()
                ),
            ];
        }
        let key = quoted_list(key_columns);
        // Each key's last change in the epoch.
        let last = format!(
            "(SELECT DISTINCT ON ({key}) * FROM {stage} ORDER BY {key}, {SEQ} DESC) AS last"
        );
        let eq = if self.key_nullable() {
            "IS NOT DISTINCT FROM"
        } else {
            "="
        };
        let matches: Vec<String> = key_columns
            .iter()
            .map(|k| format!("t.{0} {eq} last.{0}", quote(k)))
            .collect();
        let delete = format!(
            "DELETE FROM {} AS t USING {last} WHERE last.{DELETE} AND {}",
            self.qualified(),
            matches.join(" AND ")
        );
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.is_key(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        let on_conflict = match updates.is_empty() {
            true => "DO NOTHING".to_string(),
            false => format!("DO UPDATE SET {}", updates.join(", ")),
        };
        let upsert = format!(
            "INSERT INTO {} ({all}) SELECT {all} FROM {last} WHERE NOT last.{DELETE} ON CONFLICT ({key}) {on_conflict}",
            self.qualified()
        );
        vec![delete, upsert]
    }
}

/// The offsets table: per query, the last committed epoch, the checkpoint
/// lineage that committed it and the source positions.
pub fn offsets_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (query TEXT PRIMARY KEY, epoch BIGINT NOT NULL, lineage TEXT NOT NULL, positions JSONB NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        quote(table)
    )
}

/// A double-quoted identifier (any text but NUL).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quoted_list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') {
        return Err(format!("`{name}`: not a PostgreSQL identifier"));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "`{name}`: longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifiers"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, TimeUnit};

    use super::*;

    fn ohlc() -> Schema {
        Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("open", DataType::Float64, true),
        ])
    }

    #[test]
    fn a_windowed_stream_gets_typed_columns_a_primary_key_and_a_hypertable_column() {
        let key = ["window_start".to_string(), "symbol".to_string()];
        let t = TableSpec::new("ohlc_5s", "market.ohlc", &ohlc(), Some(&key)).unwrap();
        assert_eq!(
            t.create_sql(),
            "CREATE TABLE IF NOT EXISTS \"market\".\"ohlc\" (\"window_start\" TIMESTAMPTZ NOT NULL, \"symbol\" TEXT NOT NULL, \"open\" DOUBLE PRECISION, PRIMARY KEY (\"window_start\", \"symbol\"))"
        );
        assert!(t.hypertable_sql().unwrap().contains("'window_start'"));
        let merge = t.merge_sql("stage");
        assert!(merge[0].starts_with("DELETE FROM \"market\".\"ohlc\" AS t USING"));
        assert!(merge[1].ends_with(
            "ON CONFLICT (\"window_start\", \"symbol\") DO UPDATE SET \"open\" = EXCLUDED.\"open\""
        ));
    }

    #[test]
    fn a_nullable_key_is_unique_with_nulls_equal_and_rows_without_key_are_appended() {
        let schema = Schema::new(vec![
            Field::new("trader", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]);
        let t = TableSpec::new("s", "t", &schema, Some(&["trader".into()])).unwrap();
        assert!(
            t.create_sql()
                .contains("UNIQUE NULLS NOT DISTINCT (\"trader\")")
        );
        assert!(t.merge_sql("st")[0].contains("IS NOT DISTINCT FROM"));
        assert_eq!(t.hypertable_sql(), None);
        let append = TableSpec::new("s", "t", &schema, None).unwrap();
        assert!(append.merge_sql("st").is_empty());
        assert_eq!(
            append.copy_sql("st"),
            "COPY \"t\" (\"trader\", \"n\") FROM STDIN (FORMAT binary)"
        );
        let one_row = TableSpec::new("s", "t", &schema, Some(&[])).unwrap();
        assert!(!one_row.create_sql().contains("KEY"));
        assert!(one_row.merge_sql("st")[1].contains("LIMIT 1"));
    }

    #[test]
    fn names_are_quoted_and_unwritable_ones_refused() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        let long = "x".repeat(64);
        let schema = Schema::new(vec![Field::new(&long, DataType::Int64, false)]);
        let e = TableSpec::new("s", "t", &schema, None).unwrap_err();
        assert!(e.contains("63-byte"), "{e}");
        let schema = Schema::new(vec![Field::new("d", DataType::Decimal128(10, 2), false)]);
        let e = TableSpec::new("s", "t", &schema, None).unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
    }
}
