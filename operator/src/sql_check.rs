//! SQL validation with the worker's own planner and catalog (the
//! `tickflow-engine` crate), before anything is created: a query the worker
//! would reject gets `SqlValid=False` and no Deployment.

use std::collections::BTreeSet;

use tickflow_crds::{Format, StreamQuerySpec};
use tickflow_engine::parallel::partition::partitioning;
use tickflow_engine::plan::PlannedSql;
use tickflow_engine::{Catalog, SourceFormat, output_topic, plan_sql};

/// What the planner says the query reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedQuery {
    /// Streams in definition order.
    pub streams: Vec<String>,
    /// (table, topic) of every source the streams read.
    pub inputs: Vec<(String, String)>,
    /// Where each stream's rows go.
    pub outputs: Vec<(String, Output)>,
    /// Value format of the inputs.
    pub input_format: Format,
}

/// Where one stream's rows go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Topic(String),
    /// A table of the database in `spec.postgres`.
    Table(String),
}

impl Output {
    /// The worker's `--output STREAM=…` binding.
    pub fn binding(&self, stream: &str) -> String {
        match self {
            Self::Topic(t) => format!("{stream}=kafka:{t}"),
            Self::Table(t) => format!("{stream}=postgres:{t}"),
        }
    }

    pub fn topic(&self) -> Option<&str> {
        match self {
            Self::Topic(t) => Some(t),
            Self::Table(_) => None,
        }
    }
}

/// Plans `sql` as the worker will and resolves sources and sinks.
/// The error is the message to show in the SqlValid condition.
pub fn check(spec: &StreamQuerySpec, sql: &str) -> Result<CheckedQuery, String> {
    let planned = plan_sql(sql, &Catalog::builtin()).map_err(|e| e.to_string())?;
    let (catalog, plans) = (&planned.catalog, &planned.streams);
    if plans.is_empty() {
        return Err("the SQL defines no stream (expected CREATE STREAM name AS SELECT …)".into());
    }
    for s in &spec.sources {
        if catalog.get(&s.table).is_none() {
            return Err(format!(
                "spec.sources: unknown table `{}` (known: {})",
                s.table,
                catalog.names().join(", ")
            ));
        }
    }
    let streams: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    for sink in &spec.sinks {
        if !streams.contains(&sink.stream) {
            return Err(format!(
                "spec.sinks: stream `{}` is not defined by the SQL (it defines: {})",
                sink.stream,
                streams.join(", ")
            ));
        }
    }
    let used: BTreeSet<&str> = planned.tables_read();
    let mut inputs = Vec::new();
    let mut formats = BTreeSet::new();
    for table in used {
        let def = catalog
            .get(table)
            .ok_or_else(|| format!("no topic for table `{table}`"))?;
        let (topic, format) = match spec.sources.iter().find(|s| s.table == table) {
            Some(s) => (s.topic.clone(), s.format.unwrap_or_default()),
            None => {
                let format = match def.format {
                    SourceFormat::Avro => Format::Avro,
                    SourceFormat::Json => Format::Json,
                };
                (def.topic.clone(), format)
            }
        };
        // A table the SQL declares carries its format to the worker in the
        // SQL; `--input-format` is for the built-in tables only.
        if def.declared_at.is_none() {
            formats.insert(format.as_str());
        }
        inputs.push((table.to_string(), topic));
    }
    if formats.len() > 1 {
        return Err("spec.sources: all built-in source tables of one query must use the same format (declare a table with CREATE TABLE … WITH ('format' = …) to give it its own)".into());
    }
    let input_format = match formats.into_iter().next() {
        Some("json") => Format::Json,
        _ => Format::Avro,
    };
    if spec.postgres.is_none()
        && let Some(k) = spec.sinks.iter().find(|k| k.table.is_some())
    {
        return Err(format!(
            "spec.sinks: stream `{}` goes to a table, and spec.postgres names no database",
            k.stream
        ));
    }
    if spec.parallelism.is_some() {
        check_parallel(spec, &planned)?;
    }
    // A stream other streams read (an intermediate one) writes a topic
    // only when a sink names it.
    let outputs = streams
        .iter()
        .filter_map(|s| {
            let output = match spec.sinks.iter().find(|k| &k.stream == s) {
                Some(k) => match (&k.table, &k.topic) {
                    (Some(t), _) => Output::Table(t.clone()),
                    (None, Some(t)) => Output::Topic(t.clone()),
                    (None, None) => Output::Topic(output_topic(s)),
                },
                None if planned.is_read_by_streams(s) => return None,
                None => Output::Topic(output_topic(s)),
            };
            Some((s.clone(), output))
        })
        .collect();
    Ok(CheckedQuery {
        streams,
        inputs,
        outputs,
        input_format,
    })
}

/// What a query on several workers needs, as the worker checks it before
/// reading: a query split by its sources' Kafka keys, and Kafka sinks only.
/// (The partition counts are the worker's to check: the topics may not
/// exist yet.)
fn check_parallel(spec: &StreamQuerySpec, planned: &PlannedSql) -> Result<(), String> {
    let tables = planned
        .tables_read()
        .into_iter()
        .filter_map(|t| planned.catalog.get(t));
    if let Some(why) = partitioning(planned).refuses_split_by_partition(tables) {
        return Err(format!(
            "spec.parallelism: {why}, so it cannot run on several workers (create it without parallelism)"
        ));
    }
    if let Some(k) = spec.sinks.iter().find(|k| k.table.is_some()) {
        return Err(format!(
            "spec.parallelism: stream `{}` goes to a PostgreSQL table; a query on several workers \
             writes Kafka topics only",
            k.stream
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> StreamQuerySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_query_in_sql_dir_is_valid_with_default_sources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            let q = check(&spec("{}"), &sql).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!q.streams.is_empty());
            n += 1;
        }
        assert_eq!(
            n, 12,
            "a query file was added or removed: update this count and its manifest"
        );
    }

    #[test]
    fn parallelism_takes_queries_that_split_by_their_sources_kafka_key_only() {
        let sql_of = |name: &str| {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sql/{name}.sql"));
            std::fs::read_to_string(path).unwrap()
        };
        let parallel = spec(r#"{"parallelism": 3}"#);
        assert!(check(&parallel, &sql_of("ohlc_5s")).is_ok());
        // The same query is fine without parallelism either way.
        assert!(check(&spec("{}"), &sql_of("risk_alerts")).is_ok());
        let err = check(&parallel, &sql_of("risk_alerts")).unwrap_err();
        assert!(
            err.starts_with("spec.parallelism: the query does not split by key"),
            "{err}"
        );
        let global = "CREATE STREAM n AS SELECT COUNT(*) AS trades FROM market_ticks \
                      GROUP BY TUMBLE(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE;";
        assert!(
            check(&parallel, global)
                .unwrap_err()
                .contains("does not split by key")
        );
    }

    #[test]
    fn resolves_default_and_explicit_topics() {
        let sql = "CREATE STREAM big_trades AS SELECT symbol, price FROM market_ticks WHERE volume > 100;";
        let q = check(&spec("{}"), sql).unwrap();
        assert_eq!(
            q.inputs,
            vec![("market_ticks".into(), "market-ticks".into())]
        );
        assert_eq!(
            q.outputs,
            vec![("big_trades".into(), Output::Topic("big-trades".into()))]
        );
        let s = spec(
            r#"{"sources":[{"table":"market_ticks","topic":"ticks-eu","format":"json"}],
                "sinks":[{"stream":"big_trades","topic":"alerts"}]}"#,
        );
        let q = check(&s, sql).unwrap();
        assert_eq!(q.inputs, vec![("market_ticks".into(), "ticks-eu".into())]);
        assert_eq!(
            q.outputs,
            vec![("big_trades".into(), Output::Topic("alerts".into()))]
        );
        assert_eq!(q.input_format, Format::Json);
    }

    #[test]
    fn table_sinks_bind_streams_to_postgres_and_need_a_database() {
        let sql = "CREATE STREAM big_trades AS SELECT symbol FROM market_ticks WHERE volume > 100;";
        let sinks = r#""sinks":[{"stream":"big_trades","table":"market.big_trades"}]"#;
        let q = check(
            &spec(&format!(
                r#"{{{sinks},"postgres":{{"url":"postgres://tickflow@db:5432/market"}}}}"#
            )),
            sql,
        )
        .unwrap();
        let (stream, output) = &q.outputs[0];
        assert_eq!(output, &Output::Table("market.big_trades".into()));
        assert_eq!(
            output.binding(stream),
            "big_trades=postgres:market.big_trades"
        );
        let e = check(&spec(&format!("{{{sinks}}}")), sql).unwrap_err();
        assert!(e.contains("spec.postgres"), "{e}");
    }

    #[test]
    fn planner_errors_and_bad_bindings_are_reported() {
        let e = check(
            &spec("{}"),
            "CREATE STREAM x AS SELECT nosuch FROM market_ticks;",
        )
        .unwrap_err();
        assert!(e.contains("nosuch"), "{e}");
        let e = check(
            &spec("{}"),
            "CREATE STREAM x AS SELEC symbol FROM market_ticks;",
        )
        .unwrap_err();
        assert!(e.contains("SELEC") && e.contains("Line: 1"), "{e}");
        let e = check(
            &spec(r#"{"sinks":[{"stream":"y","topic":"t"}]}"#),
            "CREATE STREAM x AS SELECT symbol FROM market_ticks;",
        )
        .unwrap_err();
        assert!(e.contains("stream `y` is not defined"), "{e}");
        let e = check(
            &spec(r#"{"sources":[{"table":"trades","topic":"t"}]}"#),
            "CREATE STREAM x AS SELECT symbol FROM market_ticks;",
        )
        .unwrap_err();
        assert!(e.contains("unknown table `trades`"), "{e}");
    }

    #[test]
    fn declared_tables_bring_their_own_topic_and_format() {
        let sql = "CREATE TABLE fills (trader VARCHAR, qty BIGINT, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n  WITH ('topic' = 'desk-fills', 'format' = 'json');\n\
                   CREATE STREAM big_fills AS SELECT trader, qty FROM fills WHERE qty > 100;\n\
                   CREATE STREAM big_trades AS SELECT symbol FROM market_ticks WHERE volume > 100;";
        let q = check(&spec("{}"), sql).unwrap();
        assert_eq!(
            q.inputs,
            vec![
                ("fills".into(), "desk-fills".into()),
                ("market_ticks".into(), "market-ticks".into())
            ]
        );
        // The built-in table keeps the default format; the declared one
        // reaches the worker in the SQL.
        assert_eq!(q.input_format, Format::Avro);
        let s = spec(r#"{"sources":[{"table":"fills","topic":"fills-eu"}]}"#);
        assert_eq!(check(&s, sql).unwrap().inputs[0].1, "fills-eu");
        let e = check(
            &spec("{}"),
            "CREATE TABLE fills (qty BIGINT, ts TIMESTAMP)\n  WITH ('format' = 'json');\nCREATE STREAM x AS SELECT qty FROM fills;",
        )
        .unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("needs an event time"),
            "{e}"
        );
    }
}
