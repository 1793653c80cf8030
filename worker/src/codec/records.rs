//! One message per row: encodes a record batch into Kafka message values
//! (Confluent-framed Avro or one JSON object each) and extracts message keys.

use apache_avro::Schema as AvroSchema;
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::json::JsonLinesEncoder;
use super::{AvroEncoder, CodecError, confluent};

/// Value format of a topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// Avro in the Confluent wire format (schema id from the registry).
    #[default]
    Avro,
    /// One JSON object per message.
    Json,
}

/// Encodes rows as message values.
pub enum RowEncoder {
    Avro {
        encoder: Box<AvroEncoder>,
        schema_id: u32,
        scratch: Vec<u8>,
        ends: Vec<usize>,
    },
    Json {
        encoder: JsonLinesEncoder,
        scratch: Vec<u8>,
    },
}

impl RowEncoder {
    pub fn avro(arrow: SchemaRef, avro: &AvroSchema, schema_id: u32) -> Result<Self, CodecError> {
        Ok(Self::Avro {
            encoder: Box::new(AvroEncoder::new(arrow, avro)?),
            schema_id,
            scratch: Vec::new(),
            ends: Vec::new(),
        })
    }

    pub fn json() -> Self {
        Self::Json {
            encoder: JsonLinesEncoder::new(),
            scratch: Vec::new(),
        }
    }

    /// Appends every row's value to `out`, pushing each value's end offset
    /// (in `out`) to `ends`.
    pub fn encode(
        &mut self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        ends: &mut Vec<usize>,
    ) -> Result<(), CodecError> {
        match self {
            Self::Avro {
                encoder,
                schema_id,
                scratch,
                ends: body_ends,
            } => {
                scratch.clear();
                body_ends.clear();
                encoder.encode_batch(batch, scratch, body_ends)?;
                let mut start = 0;
                for &end in body_ends.iter() {
                    confluent::frame(*schema_id, &scratch[start..end], out);
                    ends.push(out.len());
                    start = end;
                }
            }
            Self::Json { encoder, scratch } => {
                scratch.clear();
                encoder.encode_batch(batch, scratch)?;
                // JSON strings escape newlines, so every `\n` ends a row.
                for line in scratch.split(|&b| b == b'\n').take(batch.num_rows()) {
                    out.extend_from_slice(line);
                    ends.push(out.len());
                }
            }
        }
        Ok(())
    }
}

/// Message keys from key columns: the column's text, joined by `|` when
/// there are several (e.g. `AAPL|NASDAQ`). No key columns → no key.
pub struct KeyExtractor {
    columns: Vec<usize>,
}

impl KeyExtractor {
    /// Uses the columns of `names` that `schema` has.
    pub fn new(schema: &SchemaRef, names: &[String]) -> Self {
        Self {
            columns: names
                .iter()
                .filter_map(|n| schema.index_of(n).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Appends each row's key to `out` and its end offset to `ends`.
    pub fn keys(&self, batch: &RecordBatch, out: &mut Vec<u8>, ends: &mut Vec<usize>) {
        use std::fmt::Write;
        let opts = FormatOptions::default().with_null("");
        let formatters: Vec<ArrayFormatter<'_>> = self
            .columns
            .iter()
            .filter_map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &opts).ok())
            .collect();
        let mut s = String::new();
        for row in 0..batch.num_rows() {
            s.clear();
            for (i, f) in formatters.iter().enumerate() {
                if i > 0 {
                    s.push('|');
                }
                if batch.column(self.columns[i]).is_valid(row) {
                    let _ = write!(s, "{}", f.value(row));
                }
            }
            out.extend_from_slice(s.as_bytes());
            ends.push(out.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::codec::{AvroDecoder, arrow_to_avro};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["AAPL", "MSFT\n"])),
                Arc::new(Float64Array::from(vec![1.5, 2.5])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn avro_rows_are_framed_and_decode_back() {
        let b = batch();
        let avro = arrow_to_avro(&b.schema(), "row", "test").unwrap();
        let mut enc = RowEncoder::avro(b.schema(), &avro, 42).unwrap();
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        enc.encode(&b, &mut out, &mut ends).unwrap();
        assert_eq!(ends.len(), 2);
        let mut dec = AvroDecoder::new(&avro).unwrap();
        let mut start = 0;
        for &end in &ends {
            let (id, body) = confluent::unframe(&out[start..end]).unwrap();
            assert_eq!(id, 42);
            dec.decode(body).unwrap();
            start = end;
        }
        assert_eq!(dec.finish(), b);
    }

    #[test]
    fn json_rows_split_even_with_newlines_in_strings() {
        let b = batch();
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        RowEncoder::json().encode(&b, &mut out, &mut ends).unwrap();
        let second: serde_json::Value = serde_json::from_slice(&out[ends[0]..ends[1]]).unwrap();
        assert_eq!(second["symbol"], "MSFT\n");
        assert_eq!(second["price"], 2.5);
    }

    #[test]
    fn keys_join_columns() {
        let b = batch();
        let k = KeyExtractor::new(
            &b.schema(),
            &["symbol".into(), "price".into(), "nope".into()],
        );
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        k.keys(&b, &mut out, &mut ends);
        assert_eq!(&out[..ends[0]], b"AAPL|1.5");
    }
}
