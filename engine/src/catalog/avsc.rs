//! The Arrow schema of an Avro record schema (`.avsc` JSON), for the SQL
//! side of the catalog.
//!
//! The engine does not decode Avro (the worker's codec does, with its own
//! schema resolution); it only needs the columns a table has. This reads the
//! subset a source record uses: primitive fields, enums, `["null", T]` unions
//! and the timestamp/date logical types. The worker's codec maps the same
//! files with apache-avro, and a test there checks both mappings agree.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

/// Arrow schema of the record schema in `avsc`.
pub(super) fn record_to_arrow(avsc: &str) -> Result<SchemaRef, String> {
    let json: Value = serde_json::from_str(avsc).map_err(|e| format!("not JSON: {e}"))?;
    if json["type"] != "record" {
        return Err("top-level schema must be a record".into());
    }
    let fields = json["fields"]
        .as_array()
        .ok_or("record has no fields array")?
        .iter()
        .map(|f| {
            let name = f["name"].as_str().ok_or("field without a name")?;
            let (dt, nullable) =
                field_type(&f["type"]).map_err(|why| format!("field `{name}`: {why}"))?;
            Ok(Field::new(name, dt, nullable))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Arrow type and nullability of one field's Avro type.
fn field_type(t: &Value) -> Result<(DataType, bool), String> {
    if let Value::Array(branches) = t {
        return match branches.as_slice() {
            [n, v] | [v, n] if n == "null" && v != "null" => Ok((field_type(v)?.0, true)),
            _ => Err("only [\"null\", T] unions are supported".into()),
        };
    }
    let (base, logical) = match t {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            o.get("type").and_then(Value::as_str).unwrap_or_default(),
            o.get("logicalType").and_then(Value::as_str),
        ),
        other => return Err(format!("unsupported type {other}")),
    };
    let dt = match (base, logical) {
        ("long", Some("timestamp-millis" | "local-timestamp-millis")) => {
            DataType::Timestamp(TimeUnit::Millisecond, None)
        }
        ("long", Some("timestamp-micros" | "local-timestamp-micros")) => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        ("long", Some("timestamp-nanos" | "local-timestamp-nanos")) => {
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        }
        ("int", Some("date")) => DataType::Date32,
        ("boolean", _) => DataType::Boolean,
        ("int", _) => DataType::Int32,
        ("long", _) => DataType::Int64,
        ("float", _) => DataType::Float32,
        ("double", _) => DataType::Float64,
        ("string" | "enum", _) => DataType::Utf8,
        ("bytes", _) => DataType::Binary,
        (other, _) => return Err(format!("unsupported Avro type `{other}`")),
    };
    Ok((dt, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_primitives_unions_and_logical_types() {
        let s = record_to_arrow(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"string"},
                {"name":"b","type":["null","double"]},
                {"name":"c","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"d","type":{"type":"enum","name":"E","symbols":["x"]}}]}"#,
        )
        .unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Utf8);
        assert!(s.field(1).is_nullable());
        assert_eq!(
            s.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert_eq!(s.field(3).data_type(), &DataType::Utf8);
        assert!(
            record_to_arrow(
                r#"{"type":"record","fields":[{"name":"m","type":{"type":"map","values":"int"}}]}"#
            )
            .is_err()
        );
        assert!(
            record_to_arrow(r#"{"type":"record","fields":[{"name":"u","type":["int","string"]}]}"#)
                .is_err()
        );
    }
}
