//! Codecs between wire formats (Avro, Confluent framing, Avro container files,
//! JSON lines) and Arrow record batches.
//!
//! - [`avro`]: a schema-specialised Avro binary decoder that writes straight
//!   into column buffers (with schema resolution), and an encoder from Arrow rows.
//! - [`confluent`]: the Confluent wire format (magic byte, schema id, body).
//! - [`ocf`]: Avro object container files, one block per record batch.
//! - [`json`]: JSON lines ↔ Arrow, with per-line error reporting.
//!
//! Decoding never panics on bad input: a malformed record yields a
//! [`DecodeError`] (with a stable [`DecodeError::reason`] code for dead-letter
//! counters) and leaves no partial row behind.

pub mod avro;
pub mod confluent;
pub mod json;
pub mod ocf;
pub mod records;
pub mod schema;

pub use avro::{AvroDecoder, AvroEncoder};
pub use json::{BadLine, JsonLinesDecoder, JsonLinesEncoder};
pub use ocf::{OcfCodec, OcfReader, OcfWriter};
pub use schema::{BuiltinAvroSchema, SourceTable, arrow_to_avro, avro_to_arrow};

/// Errors from building codecs, encoding records, or reading/writing container
/// files. Errors of single wire records are [`DecodeError`]s.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The schema uses a type or shape the codec does not support, or a reader
    /// and writer schema cannot be resolved.
    #[error("unsupported schema: {0}")]
    UnsupportedSchema(String),
    /// A record batch does not match the schema the encoder was built for.
    #[error("record batch does not match the encoder schema: {0}")]
    SchemaMismatch(String),
    /// A value cannot be represented in the target Avro schema.
    #[error("cannot encode row {row}, field `{field}`: {reason}")]
    Encode {
        field: String,
        row: usize,
        reason: String,
    },
    /// The header of an Avro container file is invalid.
    #[error("invalid Avro container file header: {0}")]
    InvalidHeader(String),
    /// The container file uses a compression codec this reader does not know.
    #[error("unsupported Avro container codec `{0}` (supported: null, deflate)")]
    UnknownCodec(String),
    /// A block of a container file is corrupt (framing, sync marker, codec).
    #[error("corrupt Avro container block at byte offset {offset}: {reason}")]
    CorruptBlock { offset: u64, reason: String },
    /// One record of a container file block cannot be decoded.
    #[error(
        "undecodable record {record} in Avro container block at byte offset {offset}: {source}"
    )]
    BadRecord {
        offset: u64,
        record: usize,
        #[source]
        source: DecodeError,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("Arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Why one wire record could not be decoded. `field` names the field (as
/// written by the producer) where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated in field `{field}`")]
    Truncated { field: String },
    #[error("malformed or overlong varint in field `{field}`")]
    BadVarint { field: String },
    #[error("invalid UTF-8 in string field `{field}`")]
    InvalidUtf8 { field: String },
    #[error("union branch index {index} out of range in field `{field}`")]
    BadUnionIndex { field: String, index: i64 },
    #[error("enum symbol index {index} out of range in field `{field}`")]
    BadEnumIndex { field: String, index: i64 },
    #[error("enum symbol `{symbol}` of field `{field}` is unknown to the reader schema")]
    UnknownEnumSymbol { field: String, symbol: String },
    #[error("invalid boolean byte {byte:#04x} in field `{field}`")]
    BadBoolean { field: String, byte: u8 },
    #[error("invalid length {len} in field `{field}`")]
    BadLength { field: String, len: i64 },
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    #[error("null in non-nullable field `{field}`")]
    NullInNonNullable { field: String },
    #[error("message shorter than the 5-byte Confluent header")]
    TooShort,
    #[error("bad Confluent magic byte {0:#04x} (expected 0x00)")]
    BadMagic(u8),
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
}

impl DecodeError {
    /// Short stable code for dead-letter headers and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadVarint { .. } => "bad-varint",
            Self::InvalidUtf8 { .. } => "invalid-utf8",
            Self::BadUnionIndex { .. } => "bad-union-index",
            Self::BadEnumIndex { .. } => "bad-enum-index",
            Self::UnknownEnumSymbol { .. } => "unknown-enum-symbol",
            Self::BadBoolean { .. } => "bad-boolean",
            Self::BadLength { .. } => "bad-length",
            Self::TrailingBytes(_) => "trailing-bytes",
            Self::NullInNonNullable { .. } => "null-in-non-nullable",
            Self::TooShort => "too-short",
            Self::BadMagic(_) => "bad-magic",
            Self::UnknownSchemaId(_) => "unknown-schema-id",
        }
    }
}
