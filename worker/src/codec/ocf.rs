//! Avro object container files (`.avro`), one block per record batch.
//!
//! Layout: magic `Obj\x01`, a metadata map (`avro.schema`, `avro.codec`), a
//! 16-byte sync marker, then blocks of (record count, byte size, records, sync
//! marker). [`OcfReader::position`] is the byte offset of the next block, so a
//! checkpoint can store it and [`OcfReader::seek`] back to it on restore.
//!
//! Codecs: `null` and `deflate` (via apache-avro's built-in deflate); other
//! codecs are refused with [`CodecError::UnknownCodec`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use apache_avro::{DeflateSettings, Schema};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::CodecError;
use super::avro::{AvroDecoder, AvroEncoder};
use super::schema::parse_schema_text;

/// Magic bytes at the start of every container file.
pub const MAGIC: [u8; 4] = *b"Obj\x01";
/// Largest metadata key or value accepted in a header.
const MAX_HEADER_ITEM: u64 = 64 << 20;

/// Block compression of a container file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OcfCodec {
    #[default]
    Null,
    Deflate,
}

impl OcfCodec {
    pub fn name(self) -> &'static str {
        match self {
            OcfCodec::Null => "null",
            OcfCodec::Deflate => "deflate",
        }
    }

    fn from_name(name: &str) -> Result<Self, CodecError> {
        match name {
            "null" => Ok(OcfCodec::Null),
            "deflate" => Ok(OcfCodec::Deflate),
            other => Err(CodecError::UnknownCodec(other.to_string())),
        }
    }
}

fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A fresh random sync marker (from the std hasher's random keys).
fn new_sync_marker() -> [u8; 16] {
    let state = std::collections::hash_map::RandomState::new();
    let mut marker = [0u8; 16];
    for (i, chunk) in marker.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    marker
}

/// Writes record batches to an Avro container file.
pub struct OcfWriter<W: Write> {
    w: W,
    encoder: AvroEncoder,
    sync: [u8; 16],
    codec: OcfCodec,
    block: Vec<u8>,
    row_ends: Vec<usize>,
    written: u64,
}

impl<W: Write> OcfWriter<W> {
    /// Starts a file (writes the header) with the `null` codec. Rows of
    /// `arrow` batches are written as records of the `avro` schema.
    pub fn new(w: W, avro: &Schema, arrow: SchemaRef) -> Result<Self, CodecError> {
        Self::with_codec(w, avro, arrow, OcfCodec::Null)
    }

    pub fn with_codec(
        mut w: W,
        avro: &Schema,
        arrow: SchemaRef,
        codec: OcfCodec,
    ) -> Result<Self, CodecError> {
        let encoder = AvroEncoder::new(arrow, avro)?;
        let schema_json = serde_json::to_string(avro)
            .map_err(|e| CodecError::UnsupportedSchema(format!("cannot serialise schema: {e}")))?;
        let sync = new_sync_marker();
        let mut header = Vec::with_capacity(schema_json.len() + 64);
        header.extend_from_slice(&MAGIC);
        write_long(&mut header, 2);
        write_bytes(&mut header, b"avro.schema");
        write_bytes(&mut header, schema_json.as_bytes());
        write_bytes(&mut header, b"avro.codec");
        write_bytes(&mut header, codec.name().as_bytes());
        write_long(&mut header, 0);
        header.extend_from_slice(&sync);
        w.write_all(&header)?;
        Ok(OcfWriter {
            w,
            encoder,
            sync,
            codec,
            block: Vec::new(),
            row_ends: Vec::new(),
            written: header.len() as u64,
        })
    }

    /// Writes `batch` as one block (nothing for an empty batch).
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), CodecError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.block.clear();
        self.row_ends.clear();
        self.encoder
            .encode_batch(batch, &mut self.block, &mut self.row_ends)?;
        if self.codec == OcfCodec::Deflate {
            apache_avro::Codec::Deflate(DeflateSettings::default())
                .compress(&mut self.block)
                .map_err(|e| CodecError::Io(std::io::Error::other(e.to_string())))?;
        }
        let mut head = Vec::with_capacity(20);
        write_long(&mut head, batch.num_rows() as i64);
        write_long(&mut head, self.block.len() as i64);
        self.w.write_all(&head)?;
        self.w.write_all(&self.block)?;
        self.w.write_all(&self.sync)?;
        self.written += (head.len() + self.block.len() + self.sync.len()) as u64;
        Ok(())
    }

    /// Bytes written so far (the offset of the next block).
    pub fn position(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CodecError> {
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A reader that counts the bytes it consumed.
struct Counting<R> {
    inner: BufReader<R>,
    pos: u64,
}

enum Eof {
    /// Clean end of input before the first byte.
    Clean,
    Truncated,
    Io(std::io::Error),
    Invalid(&'static str),
}

impl<R: Read> Counting<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Eof> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Eof::Truncated),
            Err(e) => Err(Eof::Io(e)),
        }
    }

    fn read_byte(&mut self) -> Result<u8, Eof> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Zig-zag varint; `Eof::Clean` if the input ends before its first byte.
    fn read_long(&mut self) -> Result<i64, Eof> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = match self.read_byte() {
                Ok(b) => b,
                Err(Eof::Truncated) if i == 0 => return Err(Eof::Clean),
                Err(e) => return Err(e),
            };
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(Eof::Invalid("overlong varint"));
                }
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(Eof::Invalid("overlong varint"))
    }

    /// Reads `len` bytes without trusting `len` for the allocation.
    fn read_vec(&mut self, len: u64, out: &mut Vec<u8>) -> Result<(), Eof> {
        out.clear();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(out)
            .map_err(Eof::Io)?;
        self.pos += got as u64;
        if (got as u64) < len {
            return Err(Eof::Truncated);
        }
        Ok(())
    }

    fn at_eof(&mut self) -> Result<bool, std::io::Error> {
        Ok(self.inner.fill_buf()?.is_empty())
    }
}

/// Reads an Avro container file block by block into record batches.
pub struct OcfReader<R: Read + Seek> {
    input: Counting<R>,
    writer_schema: Schema,
    metadata: HashMap<String, Vec<u8>>,
    codec: OcfCodec,
    sync: [u8; 16],
    decoder: AvroDecoder,
    data_start: u64,
    block: Vec<u8>,
}

impl<R: Read + Seek> OcfReader<R> {
    /// Reads the header (magic, metadata, sync marker) at the reader's
    /// current position.
    pub fn open(r: R) -> Result<Self, CodecError> {
        let mut input = Counting {
            inner: BufReader::with_capacity(256 << 10, r),
            pos: 0,
        };
        let start = input.inner.stream_position()?;
        input.pos = start;
        let header_err = |e: Eof| match e {
            Eof::Io(e) => CodecError::Io(e),
            Eof::Clean | Eof::Truncated => CodecError::InvalidHeader("truncated header".into()),
            Eof::Invalid(why) => CodecError::InvalidHeader(why.into()),
        };
        let mut magic = [0u8; 4];
        input.read_exact(&mut magic).map_err(header_err)?;
        if magic != MAGIC {
            return Err(CodecError::InvalidHeader(
                "not an Avro container file (bad magic)".into(),
            ));
        }
        let mut metadata = HashMap::new();
        let mut key = Vec::new();
        let mut value = Vec::new();
        loop {
            let mut count = input.read_long().map_err(header_err)?;
            if count == 0 {
                break;
            }
            if count < 0 {
                count = count.checked_neg().ok_or_else(|| {
                    CodecError::InvalidHeader("invalid metadata block count".into())
                })?;
                input.read_long().map_err(header_err)?; // block size in bytes
            }
            for _ in 0..count {
                for buf in [&mut key, &mut value] {
                    let len = input.read_long().map_err(header_err)?;
                    if !(0..=MAX_HEADER_ITEM as i64).contains(&len) {
                        return Err(CodecError::InvalidHeader(format!(
                            "invalid metadata length {len}"
                        )));
                    }
                    input.read_vec(len as u64, buf).map_err(header_err)?;
                }
                let k = String::from_utf8(key.clone())
                    .map_err(|_| CodecError::InvalidHeader("metadata key is not UTF-8".into()))?;
                metadata.insert(k, value.clone());
            }
        }
        let mut sync = [0u8; 16];
        input.read_exact(&mut sync).map_err(header_err)?;

        let schema_bytes = metadata
            .get("avro.schema")
            .ok_or_else(|| CodecError::InvalidHeader("no avro.schema in metadata".into()))?;
        let schema_text = std::str::from_utf8(schema_bytes)
            .map_err(|_| CodecError::InvalidHeader("avro.schema is not UTF-8".into()))?;
        let writer_schema = parse_schema_text(schema_text)
            .map_err(|e| CodecError::InvalidHeader(format!("invalid avro.schema: {e}")))?;
        let codec = match metadata.get("avro.codec") {
            None => OcfCodec::Null,
            Some(name) => OcfCodec::from_name(&String::from_utf8_lossy(name))?,
        };
        let decoder = AvroDecoder::new(&writer_schema)?;
        let data_start = input.pos;
        Ok(OcfReader {
            input,
            writer_schema,
            metadata,
            codec,
            sync,
            decoder,
            data_start,
            block: Vec::new(),
        })
    }

    /// Decodes with schema resolution into `reader`'s columns.
    pub fn with_reader_schema(mut self, reader: &Schema) -> Result<Self, CodecError> {
        self.decoder = AvroDecoder::with_writer(&self.writer_schema, reader)?;
        Ok(self)
    }

    /// The schema the file was written with.
    pub fn writer_schema(&self) -> &Schema {
        &self.writer_schema
    }

    /// Arrow schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    pub fn codec(&self) -> OcfCodec {
        self.codec
    }

    /// All header metadata (including `avro.schema` and `avro.codec`).
    pub fn metadata(&self) -> &HashMap<String, Vec<u8>> {
        &self.metadata
    }

    /// Byte offset of the first block.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Byte offset of the next block.
    pub fn position(&self) -> u64 {
        self.input.pos
    }

    /// Continues reading at `pos`, which must be a block boundary (a value of
    /// [`position`](Self::position)); anything else fails the sync check.
    pub fn seek(&mut self, pos: u64) -> Result<(), CodecError> {
        self.input.inner.seek(SeekFrom::Start(pos))?;
        self.input.pos = pos;
        Ok(())
    }

    /// Decodes the next block, or `None` at the end of the file.
    ///
    /// A corrupt block is an error naming its byte offset (and the record
    /// index for an undecodable record); when the block's framing was intact
    /// the reader is positioned after it, so the caller may skip it.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, CodecError> {
        let offset = self.input.pos;
        if self.input.at_eof()? {
            return Ok(None);
        }
        let corrupt = |reason: String| CodecError::CorruptBlock { offset, reason };
        let framing = |e: Eof, what: &str| match e {
            Eof::Io(e) => CodecError::Io(e),
            Eof::Clean | Eof::Truncated => corrupt(format!("truncated {what}")),
            Eof::Invalid(why) => corrupt(format!("{why} in {what}")),
        };
        let count = self
            .input
            .read_long()
            .map_err(|e| framing(e, "block header"))?;
        let size = self
            .input
            .read_long()
            .map_err(|e| framing(e, "block header"))?;
        if count < 0 || size < 0 {
            return Err(corrupt(format!(
                "negative record count {count} or size {size}"
            )));
        }
        let mut block = std::mem::take(&mut self.block);
        let result = self.read_block(&mut block, count as u64, size as u64, offset);
        self.block = block;
        result.map(Some)
    }

    fn read_block(
        &mut self,
        block: &mut Vec<u8>,
        count: u64,
        size: u64,
        offset: u64,
    ) -> Result<RecordBatch, CodecError> {
        let corrupt = |reason: String| CodecError::CorruptBlock { offset, reason };
        match self.input.read_vec(size, block) {
            Ok(()) => {}
            Err(Eof::Io(e)) => return Err(CodecError::Io(e)),
            Err(_) => {
                return Err(corrupt(format!(
                    "truncated block: {size} bytes announced, {} present",
                    block.len()
                )));
            }
        }
        let mut sync = [0u8; 16];
        match self.input.read_exact(&mut sync) {
            Ok(()) => {}
            Err(Eof::Io(e)) => return Err(CodecError::Io(e)),
            Err(_) => return Err(corrupt("truncated sync marker".into())),
        }
        if sync != self.sync {
            return Err(corrupt("sync marker does not match the header".into()));
        }
        if self.codec == OcfCodec::Deflate {
            apache_avro::Codec::Deflate(DeflateSettings::default())
                .decompress(block)
                .map_err(|e| corrupt(format!("deflate: {e}")))?;
        }
        // Every record of a schema with fields takes at least one byte.
        if count > (block.len() as u64).max(1 << 20) {
            return Err(corrupt(format!(
                "record count {count} exceeds the block's {} bytes",
                block.len()
            )));
        }
        let mut at = 0usize;
        for record in 0..count as usize {
            match self.decoder.decode_one(&block[at..]) {
                Ok(used) => at += used,
                Err(source) => {
                    self.decoder.clear();
                    return Err(CodecError::BadRecord {
                        offset,
                        record,
                        source,
                    });
                }
            }
        }
        if at != block.len() {
            self.decoder.clear();
            return Err(corrupt(format!(
                "{} bytes left after {count} records",
                block.len() - at
            )));
        }
        Ok(self.decoder.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::tests::ticks;
    use crate::codec::{BuiltinAvroSchema, SourceTable};
    use apache_avro::types::Value;
    use std::io::Cursor;

    fn write_file(codec: OcfCodec, batches: &[RecordBatch]) -> (Vec<u8>, Vec<u64>) {
        let t = SourceTable::MarketTicks;
        let mut w =
            OcfWriter::with_codec(Vec::new(), t.avro_schema(), t.arrow_schema(), codec).unwrap();
        let mut positions = vec![w.position()];
        for b in batches {
            w.write_batch(b).unwrap();
            positions.push(w.position());
        }
        (w.finish().unwrap(), positions)
    }

    fn batches() -> Vec<RecordBatch> {
        vec![ticks(100, 1_000), ticks(1, 5_000), ticks(2_500, 10_000)]
    }

    #[test]
    fn round_trip_and_seek() {
        for codec in [OcfCodec::Null, OcfCodec::Deflate] {
            let input = batches();
            let (file, written) = write_file(codec, &input);
            let mut r = OcfReader::open(Cursor::new(file.clone())).unwrap();
            assert_eq!(r.codec(), codec);
            assert_eq!(r.schema(), SourceTable::MarketTicks.arrow_schema());
            assert_eq!(r.writer_schema(), SourceTable::MarketTicks.avro_schema());
            assert_eq!(r.data_start(), written[0]);
            let mut positions = vec![r.position()];
            let mut out = Vec::new();
            while let Some(b) = r.next_batch().unwrap() {
                out.push(b);
                positions.push(r.position());
            }
            assert_eq!(out, input);
            assert_eq!(
                positions, written,
                "position() is the offset of the next block"
            );
            assert!(r.next_batch().unwrap().is_none());

            // Restore from a checkpointed position.
            let mut r = OcfReader::open(Cursor::new(file)).unwrap();
            r.seek(positions[2]).unwrap();
            assert_eq!(r.next_batch().unwrap().unwrap(), input[2]);
            assert!(r.next_batch().unwrap().is_none());
            r.seek(positions[1]).unwrap();
            assert_eq!(r.next_batch().unwrap().unwrap(), input[1]);
        }
    }

    #[test]
    fn apache_avro_reads_our_files() {
        for codec in [OcfCodec::Null, OcfCodec::Deflate] {
            let input = batches();
            let (file, _) = write_file(codec, &input);
            let reader = apache_avro::Reader::new(&file[..]).unwrap();
            let values: Vec<Value> = reader.map(|v| v.unwrap()).collect();
            assert_eq!(values.len(), 2601);
            let Value::Record(fields) = &values[100] else {
                panic!("not a record")
            };
            assert_eq!(fields[0], ("symbol".into(), Value::String("AAPL".into())));
            assert_eq!(fields[9], ("ts".into(), Value::TimestampMillis(5_000)));
            let Value::Record(fields) = &values[2600] else {
                panic!("not a record")
            };
            assert_eq!(fields[9], ("ts".into(), Value::TimestampMillis(12_499)));
        }
    }

    fn apache_file(codec: apache_avro::Codec, schema: &Schema, values: Vec<Value>) -> Vec<u8> {
        let mut w = apache_avro::Writer::with_codec(schema, Vec::new(), codec);
        for v in values {
            w.append(v).unwrap();
        }
        w.into_inner().unwrap()
    }

    fn order(i: i64) -> Value {
        let s = |v: &str| Value::String(v.into());
        Value::Record(vec![
            ("order_id".into(), s(&format!("o{i}"))),
            ("client_order_id".into(), s("c")),
            ("trader_id".into(), s("t")),
            ("symbol".into(), s("NVDA")),
            ("side".into(), s("buy")),
            ("order_type".into(), s("limit")),
            ("quantity".into(), Value::Long(i)),
            (
                "price".into(),
                Value::Union(1, Box::new(Value::Double(i as f64))),
            ),
            ("status".into(), s("new")),
            ("ts".into(), Value::TimestampMillis(i)),
        ])
    }

    #[test]
    fn reads_apache_avro_files_with_resolution() {
        // Old writer schema without filled_quantity.
        let mut json: serde_json::Value =
            serde_json::from_str(SourceTable::OrderEvents.avsc()).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "filled_quantity");
        let writer = Schema::parse(&json).unwrap();
        for codec in [
            apache_avro::Codec::Null,
            apache_avro::Codec::Deflate(DeflateSettings::default()),
        ] {
            let file = apache_file(codec, &writer, (0..20_000).map(order).collect());
            let r = OcfReader::open(Cursor::new(file)).unwrap();
            let mut r = r
                .with_reader_schema(SourceTable::OrderEvents.avro_schema())
                .unwrap();
            let mut rows = 0;
            while let Some(b) = r.next_batch().unwrap() {
                assert_eq!(b.schema(), SourceTable::OrderEvents.arrow_schema());
                let q = b.column_by_name("quantity").unwrap();
                let q = q
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                assert_eq!(q.value(0), rows as i64);
                let f = b.column_by_name("filled_quantity").unwrap();
                assert_eq!(f.null_count(), 0);
                rows += b.num_rows();
            }
            assert_eq!(rows, 20_000);
        }
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_block() {
        let input = batches();
        let (file, pos) = write_file(OcfCodec::Null, &input);

        // Bad sync marker after block 1.
        let mut bad = file.clone();
        let sync_at = pos[2] as usize - 1;
        bad[sync_at] ^= 0xff;
        let mut r = OcfReader::open(Cursor::new(bad)).unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap(), input[0]);
        match r.next_batch() {
            Err(CodecError::CorruptBlock { offset, reason }) => {
                assert_eq!(offset, pos[1]);
                assert!(reason.contains("sync"), "{reason}");
            }
            other => panic!("expected CorruptBlock, got {other:?}"),
        }
        // The framing was intact, so reading continues after the block.
        assert_eq!(r.next_batch().unwrap().unwrap(), input[2]);

        // An undecodable record: make the 2nd record's symbol length negative.
        let mut bad = file.clone();
        let mut r = OcfReader::open(Cursor::new(file.clone())).unwrap();
        let block0 = r.position() as usize;
        // Block header: count (100 → 2 bytes), size (varint), then records.
        let mut p = block0;
        let skip_varint = |p: &mut usize| {
            while file[*p] & 0x80 != 0 {
                *p += 1;
            }
            *p += 1;
        };
        skip_varint(&mut p);
        skip_varint(&mut p);
        let t = SourceTable::MarketTicks;
        let enc = crate::codec::AvroEncoder::new(t.arrow_schema(), t.avro_schema()).unwrap();
        let mut first = Vec::new();
        enc.encode_row(&input[0], 0, &mut first).unwrap();
        bad[p + first.len()] = 0x01; // zig-zag -1
        let mut r2 = OcfReader::open(Cursor::new(bad)).unwrap();
        match r2.next_batch() {
            Err(CodecError::BadRecord {
                offset,
                record,
                source,
            }) => {
                assert_eq!(offset, pos[0]);
                assert_eq!(record, 1);
                assert_eq!(source.reason(), "bad-length");
                let msg = CodecError::BadRecord {
                    offset,
                    record,
                    source,
                }
                .to_string();
                assert!(
                    msg.contains("record 1") && msg.contains(&pos[0].to_string()),
                    "{msg}"
                );
            }
            other => panic!("expected BadRecord, got {other:?}"),
        }
        // No rows of the bad block leak into the next batch.
        assert_eq!(r2.next_batch().unwrap().unwrap(), input[1]);
        r.seek(pos[2]).unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap(), input[2]);

        // Truncated file.
        let cut = &file[..file.len() - 20];
        let mut r = OcfReader::open(Cursor::new(cut.to_vec())).unwrap();
        r.next_batch().unwrap();
        r.next_batch().unwrap();
        assert!(matches!(
            r.next_batch(),
            Err(CodecError::CorruptBlock { .. })
        ));

        // Bad magic, truncated header, unknown codec.
        assert!(matches!(
            OcfReader::open(Cursor::new(b"Obj\x02".to_vec())),
            Err(CodecError::InvalidHeader(_))
        ));
        assert!(matches!(
            OcfReader::open(Cursor::new(file[..10].to_vec())),
            Err(CodecError::InvalidHeader(_))
        ));
        let mut header = MAGIC.to_vec();
        write_long(&mut header, 2);
        write_bytes(&mut header, b"avro.schema");
        write_bytes(&mut header, SourceTable::BookUpdates.avsc().as_bytes());
        write_bytes(&mut header, b"avro.codec");
        write_bytes(&mut header, b"snappy");
        write_long(&mut header, 0);
        header.extend_from_slice(&[7; 16]);
        match OcfReader::open(Cursor::new(header)) {
            Err(CodecError::UnknownCodec(c)) => assert_eq!(c, "snappy"),
            other => panic!("expected UnknownCodec, got {:?}", other.err()),
        }
    }

    #[test]
    fn fuzzed_files_never_panic() {
        let (file, _) = write_file(OcfCodec::Null, &[ticks(50, 0), ticks(20, 100)]);
        let (dfile, _) = write_file(OcfCodec::Deflate, &[ticks(50, 0), ticks(20, 100)]);
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // TICKFLOW_FUZZ_ITERS=… runs a longer campaign.
        let iters = std::env::var("TICKFLOW_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        for i in 0..iters {
            let mut f = if i % 2 == 0 {
                file.clone()
            } else {
                dfile.clone()
            };
            for _ in 0..1 + rnd() % 4 {
                let at = rnd() as usize % f.len();
                match rnd() % 4 {
                    0 => f.truncate(at),
                    _ => f[at] = rnd() as u8,
                }
                if f.is_empty() {
                    break;
                }
            }
            if let Ok(mut r) = OcfReader::open(Cursor::new(f)) {
                for _ in 0..10 {
                    match r.next_batch() {
                        Ok(Some(_)) | Err(_) => {}
                        Ok(None) => break,
                    }
                }
            }
        }
    }
}
