//! Avro binary ↔ Arrow, specialised to a schema.
//!
//! [`AvroDecoder`] compiles a reader schema (optionally resolved against a
//! different writer schema) into a flat list of field operations once, then
//! decodes record bodies straight into typed column buffers — no intermediate
//! `Value`s. A record that fails to decode is rolled back completely, so a
//! batch only ever contains whole, valid rows. [`AvroDecoder::finish`] hands the
//! buffers to Arrow without copying.
//!
//! [`AvroEncoder`] writes Arrow rows as Avro binary bodies for a record schema
//! (e.g. one made by [`arrow_to_avro`](super::schema::arrow_to_avro)).
//!
//! Submodules (private; the public API is re-exported here):
//! - `reader`: low-level binary reading primitives (varints, fixed-size
//!   values, length-prefixed bytes, booleans) and skipping of writer fields
//!   the reader does not have.
//! - `decoder`: [`AvroDecoder`], its compiled field operations, the typed
//!   column store and the hot decoding loop.
//! - `encoder`: [`AvroEncoder`], Avro binary writing and field defaults.
//! - `tests` (test builds only): round trips, interoperability with
//!   `apache_avro`, schema resolution and malformed input; also provides the
//!   `ticks` fixture used by the other codec tests.

mod decoder;
mod encoder;
mod reader;
#[cfg(test)]
pub(crate) mod tests;

pub use decoder::AvroDecoder;
pub use encoder::AvroEncoder;
