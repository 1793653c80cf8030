//! Binding a query to Kafka: source tables to topics (with their reader
//! schemas from the catalog), streams and late rows to output topics (with
//! encoders whose Avro schemas are registered), and the output topics
//! created if missing.

use std::sync::Arc;

use anyhow::{Context, bail};
use apache_avro::Schema as AvroSchema;
use arrow::datatypes::SchemaRef;

use super::KafkaQueryOptions;
use crate::codec::records::{KeyExtractor, RowEncoder, ValueFormat};
use crate::codec::schema::{arrow_to_avro, parse_schema_text};
use crate::engine::{Pipeline, SourceDef, SourceFormat, output_topic};
use crate::kafka::RegistryClient;
use crate::kafka::registry::value_subject;
use crate::runner::RowKind;
use crate::sink::kafka::OutputTopic;
use crate::source::kafka::TopicBinding;

/// Every table the streams read, bound to its topic (`--input TABLE=kafka:TOPIC`
/// or the catalog's default) and value format (a declared table's own; a
/// built-in table's is `--input-format`).
pub(super) fn bindings(
    opts: &KafkaQueryOptions,
    pipeline: &Pipeline,
) -> anyhow::Result<Vec<TopicBinding>> {
    let catalog = pipeline.catalog();
    for table in opts.inputs.keys() {
        if catalog.get(table).is_none() {
            bail!(
                "--input {table}=…: unknown source table `{table}` (known: {})",
                catalog.names().join(", ")
            );
        }
    }
    pipeline
        .source_names()
        .into_iter()
        .map(|table| {
            let def = pipeline.source(&table).expect("the pipeline reads it");
            Ok(TopicBinding {
                topic: opts
                    .inputs
                    .get(&table)
                    .cloned()
                    .unwrap_or_else(|| def.topic.clone()),
                format: match (def.declared_at, def.format) {
                    (None, _) => opts.input_format,
                    (Some(_), SourceFormat::Json) => ValueFormat::Json,
                    (Some(_), SourceFormat::Avro) => ValueFormat::Avro,
                },
                arrow_schema: Arc::clone(&def.schema),
                avro_schema: reader_schema(def)?,
                table,
            })
        })
        .collect()
}

/// A declared Avro table is checked against the newest schema of its
/// topic's subject: a table whose columns that schema cannot be read as
/// fails at start, not record by record. A subject not registered yet, or
/// a registry that does not answer now, leaves the check to each record
/// (an unreadable one is a dead letter, a registry outage a retry).
pub(super) fn check_declared_avro_tables(
    opts: &KafkaQueryOptions,
    pipeline: &Pipeline,
    bindings: &[TopicBinding],
) -> anyhow::Result<()> {
    // Without a registry the source refuses Avro input when it opens.
    let Some(registry) = opts.registry.as_ref() else {
        return Ok(());
    };
    for b in bindings {
        let def = pipeline.source(&b.table).expect("bound from the pipeline");
        if def.declared_at.is_none() || b.format != ValueFormat::Avro {
            continue;
        }
        let subject = value_subject(&b.topic);
        match registry.latest_schema(&subject) {
            Ok(Some((id, writer))) => {
                crate::source::kafka::decoder_for(&writer, &b.avro_schema).map_err(|e| {
                    anyhow::anyhow!(
                        "table `{}` (declared at line {}) does not match the schema registered under `{subject}` (id {id}): {e}",
                        b.table,
                        def.declared_at.unwrap_or_default()
                    )
                })?;
                tracing::info!(table = %b.table, %subject, id, "declared columns match the registered schema");
            }
            Ok(None) => tracing::info!(
                table = %b.table,
                %subject,
                "no schema registered yet; each record's schema is checked as it arrives"
            ),
            Err(e) if e.is_transient() => tracing::warn!(
                table = %b.table,
                %subject,
                "could not check the declared columns against the registry now ({e}); each record's schema is checked as it arrives"
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("checking table `{}`", b.table)));
            }
        }
    }
    Ok(())
}

/// The Avro schema rows of `def` are read (and late rows written) with:
/// the catalog's, or one derived from the table's columns.
fn reader_schema(def: &SourceDef) -> anyhow::Result<AvroSchema> {
    match &def.avro_schema {
        Some(text) => parse_schema_text(text)
            .map_err(|e| anyhow::anyhow!("the Avro schema of table `{}`: {e}", def.name)),
        None => Ok(arrow_to_avro(&def.schema, &def.name, "io.tickflow.tables")?),
    }
}

/// One output topic per stream, plus the late-row topics asked for; creates
/// the topics (and the dead-letter topic) if missing.
pub(super) fn outputs(
    opts: &KafkaQueryOptions,
    pipeline: &Pipeline,
) -> anyhow::Result<Vec<OutputTopic>> {
    pipeline.check_stream_names(
        opts.outputs
            .keys()
            .chain(opts.late_outputs.keys())
            .chain(opts.postgres_outputs.keys()),
    )?;
    let streams = pipeline.streams();
    let mut outputs = Vec::new();
    for s in streams {
        // A stream other streams read, or one bound to a PostgreSQL table,
        // writes a topic only where bound to one.
        let topic = match opts.outputs.get(&s.name) {
            Some(topic) => Some(topic.clone()),
            None if s.intermediate || opts.postgres_outputs.contains_key(&s.name) => None,
            None => Some(output_topic(&s.name)),
        };
        if let Some(topic) = topic {
            outputs.push(OutputTopic {
                stream: s.name.clone(),
                kind: RowKind::Results,
                name: s.name.clone(),
                keys: KeyExtractor::new(&s.output_schema, &s.key_columns),
                encoder: stream_encoder(opts, &topic, &s.output_schema, &s.name)?,
                topic,
            });
        }
        if let Some(topic) = opts.late_outputs.get(&s.name) {
            let def = pipeline.input_def(s);
            outputs.push(OutputTopic {
                stream: s.name.clone(),
                kind: RowKind::Late,
                name: format!("{} (late rows)", s.name),
                keys: KeyExtractor::new(&def.schema, &def.key_columns),
                encoder: late_row_encoder(opts, topic, def)?,
                topic: topic.clone(),
            });
        }
    }
    let mut topics: Vec<String> = outputs.iter().map(|o| o.topic.clone()).collect();
    topics.extend(opts.dead_letter_topic.clone());
    let compacted: Vec<String> = outputs
        .iter()
        .filter(|o| {
            o.kind == RowKind::Results && streams.iter().any(|s| s.name == o.stream && s.updating)
        })
        .map(|o| o.topic.clone())
        .collect();
    crate::kafka::admin::ensure_topics_compacted(
        &opts.kafka,
        &topics,
        &compacted,
        opts.output_partitions,
        opts.replication,
    )?;
    Ok(outputs)
}

fn registry(opts: &KafkaQueryOptions) -> anyhow::Result<&RegistryClient> {
    opts.registry
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("Avro output needs a schema registry (--schema-registry or SCHEMA_REGISTRY_URL), or use --output-format json"))
}

/// Encoder of a stream's rows; for Avro, the schema is derived from the
/// stream's columns and registered under the topic's subject.
fn stream_encoder(
    opts: &KafkaQueryOptions,
    topic: &str,
    schema: &SchemaRef,
    stream: &str,
) -> anyhow::Result<RowEncoder> {
    Ok(match opts.output_format {
        ValueFormat::Json => RowEncoder::json(),
        ValueFormat::Avro => {
            let avro = arrow_to_avro(schema, stream, "io.tickflow.streams")
                .with_context(|| format!("deriving the Avro schema of stream `{stream}`"))?;
            let id = registry(opts)?
                .register(&value_subject(topic), &avro)
                .with_context(|| format!("registering the schema of stream `{stream}`"))?;
            RowEncoder::avro(Arc::clone(schema), &avro, id)?
        }
    })
}

/// Encoder of late source rows: the source's own record schema.
fn late_row_encoder(
    opts: &KafkaQueryOptions,
    topic: &str,
    def: &SourceDef,
) -> anyhow::Result<RowEncoder> {
    Ok(match opts.output_format {
        ValueFormat::Json => RowEncoder::json(),
        ValueFormat::Avro => {
            let avro = reader_schema(def)?;
            let id = registry(opts)?.register(&value_subject(topic), &avro)?;
            RowEncoder::avro(Arc::clone(&def.schema), &avro, id)?
        }
    })
}
