//! The Avro schemas of the source topics and their Arrow equivalents.
//!
//! The `.avsc` files under `schemas/` are the single source of truth: they are
//! embedded here, registered with the schema registry, and turned into the Arrow
//! schemas the SQL planner sees.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema as AvroSchema;
use apache_avro::schema::{Name, Namespace, ResolvedSchema};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::json;

use super::CodecError;

pub use crate::engine::SourceTable;

/// The parsed Avro schema of a built-in table (the catalog holds its text).
pub trait BuiltinAvroSchema {
    /// Parsed once; the embedded files are tested to parse.
    fn avro_schema(self) -> &'static AvroSchema;
}

impl BuiltinAvroSchema for SourceTable {
    fn avro_schema(self) -> &'static AvroSchema {
        static CACHE: OnceLock<Vec<AvroSchema>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            SourceTable::ALL
                .iter()
                .map(|t| AvroSchema::parse_str(t.avsc()).expect("embedded .avsc parses"))
                .collect()
        });
        &all[self as usize]
    }
}

/// Parses schema text from an untrusted source (a container file header, a
/// registry response). apache-avro 0.21 panics on some invalid names instead
/// of returning an error, so names are checked first and any remaining panic
/// is caught and reported as an error.
pub fn parse_schema_text(text: &str) -> Result<AvroSchema, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    check_names(&json)?;
    match std::panic::catch_unwind(|| AvroSchema::parse(&json)) {
        Ok(Ok(schema)) => Ok(schema),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("schema rejected by the Avro parser".into()),
    }
}

fn check_names(json: &serde_json::Value) -> Result<(), String> {
    match json {
        serde_json::Value::Array(items) => items.iter().try_for_each(check_names),
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(name)) = map.get("name")
                && !name.split('.').all(is_avro_name)
            {
                return Err(format!("invalid Avro name `{name}`"));
            }
            map.iter()
                .filter(|(k, _)| k.as_str() != "default")
                .try_for_each(|(_, v)| check_names(v))
        }
        _ => Ok(()),
    }
}

/// Named types (records, enums, fixed) of a schema by full name, to follow
/// `Schema::Ref`s.
pub(crate) type Names<'a> = HashMap<Name, &'a AvroSchema>;

/// Collects the named types of `schema`.
pub(crate) fn named_types(schema: &AvroSchema) -> Result<Names<'_>, CodecError> {
    let resolved = ResolvedSchema::try_from(schema)
        .map_err(|e| CodecError::UnsupportedSchema(format!("cannot resolve named types: {e}")))?;
    Ok(resolved.get_names().clone())
}

/// Follows `Schema::Ref`s to the named schema they stand for.
pub(crate) fn deref<'a>(
    schema: &'a AvroSchema,
    names: &Names<'a>,
    namespace: &Namespace,
) -> Result<&'a AvroSchema, String> {
    let mut current = schema;
    // A chain of refs is at most as long as the number of names.
    for _ in 0..=names.len() {
        match current {
            AvroSchema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                current = names
                    .get(&full)
                    .copied()
                    .ok_or_else(|| format!("unknown named type `{}`", full.fullname(None)))?;
            }
            other => return Ok(other),
        }
    }
    Err("cyclic type reference".into())
}

/// Maps an Avro record schema to an Arrow schema.
///
/// Supported field types are the flat ones market data uses: primitives, enums
/// (as strings), `timestamp-millis`/`-micros`/`-nanos` (as `Timestamp` without
/// time zone, UTC by convention), `date` (as `Date32`) and `["null", T]` unions
/// (as nullable fields).
pub fn avro_to_arrow(schema: &AvroSchema) -> Result<SchemaRef, CodecError> {
    let AvroSchema::Record(record) = schema else {
        return Err(CodecError::UnsupportedSchema(
            "top-level schema must be a record".into(),
        ));
    };
    let names = named_types(schema)?;
    let ns = &record.name.namespace;
    let fields = record
        .fields
        .iter()
        .map(|f| {
            let (data_type, nullable) = field_type_in(&f.schema, &names, ns).map_err(|why| {
                CodecError::UnsupportedSchema(format!("field `{}`: {why}", f.name))
            })?;
            Ok(Field::new(&f.name, data_type, nullable))
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Arrow type and nullability of one Avro field schema (without named-type
/// references; see [`avro_to_arrow`] for whole records).
pub fn avro_field_type(schema: &AvroSchema) -> Result<(DataType, bool), String> {
    field_type_in(schema, &Names::new(), &None)
}

/// The non-null branch of a `["null", T]` / `[T, "null"]` union, with the
/// indexes of the null and value branches; `None` if `schema` is no union.
pub(crate) fn nullable_union(schema: &AvroSchema) -> Result<Option<(usize, usize)>, String> {
    let AvroSchema::Union(union) = schema else {
        return Ok(None);
    };
    let variants = union.variants();
    match variants {
        [AvroSchema::Null, t] if !matches!(t, AvroSchema::Null) => Ok(Some((0, 1))),
        [t, AvroSchema::Null] if !matches!(t, AvroSchema::Null) => Ok(Some((1, 0))),
        _ => Err("only [\"null\", T] unions are supported".into()),
    }
}

pub(crate) fn field_type_in(
    schema: &AvroSchema,
    names: &Names<'_>,
    ns: &Namespace,
) -> Result<(DataType, bool), String> {
    if let AvroSchema::Union(union) = schema {
        let (_, value_idx) = nullable_union(schema)?.ok_or("not a union")?;
        let (dt, _) = field_type_in(&union.variants()[value_idx], names, ns)?;
        return Ok((dt, true));
    }
    let dt = match deref(schema, names, ns)? {
        AvroSchema::Boolean => DataType::Boolean,
        AvroSchema::Int => DataType::Int32,
        AvroSchema::Long => DataType::Int64,
        AvroSchema::Float => DataType::Float32,
        AvroSchema::Double => DataType::Float64,
        AvroSchema::String | AvroSchema::Enum(_) | AvroSchema::Uuid => DataType::Utf8,
        AvroSchema::Bytes => DataType::Binary,
        AvroSchema::Date => DataType::Date32,
        AvroSchema::TimestampMillis | AvroSchema::LocalTimestampMillis => {
            DataType::Timestamp(TimeUnit::Millisecond, None)
        }
        AvroSchema::TimestampMicros | AvroSchema::LocalTimestampMicros => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        AvroSchema::TimestampNanos | AvroSchema::LocalTimestampNanos => {
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        }
        other => return Err(format!("unsupported Avro type {}", kind_name(other))),
    };
    Ok((dt, false))
}

/// Short name of an Avro type for messages.
pub(crate) fn kind_name(schema: &AvroSchema) -> String {
    match schema {
        AvroSchema::Record(r) => format!("record {}", r.name.fullname(None)),
        AvroSchema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        AvroSchema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        AvroSchema::Ref { name } => format!("reference {}", name.fullname(None)),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Avro type (as JSON) of an Arrow type, for query outputs.
fn arrow_type_to_avro_json(dt: &DataType) -> Result<serde_json::Value, String> {
    Ok(match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::Timestamp(unit, _) => {
            let logical = match unit {
                TimeUnit::Second | TimeUnit::Millisecond => "timestamp-millis",
                TimeUnit::Microsecond => "timestamp-micros",
                TimeUnit::Nanosecond => "timestamp-nanos",
            };
            json!({"type": "long", "logicalType": logical})
        }
        other => return Err(format!("Arrow type {other} has no Avro mapping")),
    })
}

/// Builds an Avro record schema for an Arrow schema (query outputs).
///
/// Nullable fields become `["null", T]` with default `null`; timestamps become
/// `long` with the `timestamp-millis` (seconds, milliseconds), `-micros` or
/// `-nanos` logical type, whatever their time zone (Arrow timestamps are UTC
/// instants); unsigned 64-bit integers become `long` (values above `i64::MAX`
/// fail at encoding). Column names must be valid Avro names — alias computed
/// columns (`COUNT(*) AS n`).
pub fn arrow_to_avro(
    schema: &Schema,
    name: &str,
    namespace: &str,
) -> Result<AvroSchema, CodecError> {
    if !is_avro_name(name) {
        return Err(CodecError::UnsupportedSchema(format!(
            "`{name}` is not a valid Avro record name"
        )));
    }
    if !namespace.is_empty() && !namespace.split('.').all(is_avro_name) {
        return Err(CodecError::UnsupportedSchema(format!(
            "`{namespace}` is not a valid Avro namespace"
        )));
    }
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            if !is_avro_name(f.name()) {
                return Err(CodecError::UnsupportedSchema(format!(
                    "column `{}` is not a valid Avro field name ([A-Za-z_][A-Za-z0-9_]*); \
                     give it an alias",
                    f.name()
                )));
            }
            let ty = arrow_type_to_avro_json(f.data_type()).map_err(|why| {
                CodecError::UnsupportedSchema(format!("column `{}`: {why}", f.name()))
            })?;
            Ok(if f.is_nullable() {
                json!({"name": f.name(), "type": ["null", ty], "default": null})
            } else {
                json!({"name": f.name(), "type": ty})
            })
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    let mut record = json!({"type": "record", "name": name, "fields": fields});
    if !namespace.is_empty() {
        record["namespace"] = json!(namespace);
    }
    AvroSchema::parse(&record).map_err(|e| {
        CodecError::UnsupportedSchema(format!("generated Avro schema is invalid: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_map_to_arrow() {
        for t in SourceTable::ALL {
            let arrow = t.arrow_schema();
            // The catalog's own reading of the .avsc (what SQL sees) and the
            // codec's (what decoding produces) are the same schema.
            assert_eq!(arrow, avro_to_arrow(t.avro_schema()).unwrap(), "{t:?}");
            let ts = arrow.field_with_name("ts").unwrap();
            assert_eq!(
                ts.data_type(),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
                "{t:?}"
            );
            assert!(!ts.is_nullable());
            assert_eq!(SourceTable::from_table_name(t.table_name()), Some(t));
            assert_eq!(SourceTable::from_topic(t.topic()), Some(t));
        }
        let orders = SourceTable::OrderEvents.arrow_schema();
        let price = orders.field_with_name("price").unwrap();
        assert_eq!(price.data_type(), &DataType::Float64);
        assert!(price.is_nullable());
    }

    #[test]
    fn arrow_to_avro_maps_query_outputs() {
        let schema = Schema::new(vec![
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
            Field::new("n", DataType::Int64, true),
            Field::new("vwap", DataType::Float64, true),
            Field::new("flag", DataType::Boolean, false),
        ]);
        let avro = arrow_to_avro(&schema, "ohlc_5s", "io.tickflow.out").unwrap();
        let AvroSchema::Record(rec) = &avro else {
            panic!("not a record")
        };
        assert_eq!(rec.name.fullname(None), "io.tickflow.out.ohlc_5s");
        let types: Vec<_> = rec.fields.iter().map(|f| f.schema.clone()).collect();
        assert!(matches!(types[0], AvroSchema::String));
        assert!(matches!(types[1], AvroSchema::TimestampMillis));
        assert_eq!(nullable_union(&types[2]).unwrap(), Some((0, 1)));
        assert!(matches!(types[3], AvroSchema::Long));
        assert_eq!(rec.fields[4].default, Some(serde_json::Value::Null));
        // And back: the mapping round-trips modulo unsigned/time zone.
        let back = avro_to_arrow(&avro).unwrap();
        assert_eq!(
            back.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert!(back.field(2).is_nullable());
        assert_eq!(back.field(3).data_type(), &DataType::Int64);

        let bad = Schema::new(vec![Field::new("COUNT(*)", DataType::Int64, false)]);
        let err = arrow_to_avro(&bad, "x", "").unwrap_err().to_string();
        assert!(err.contains("COUNT(*)"), "{err}");
    }
}
