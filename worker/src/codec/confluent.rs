//! The Confluent wire format: magic byte `0`, the schema id as a 4-byte
//! big-endian integer, then the Avro binary body.

use super::DecodeError;

/// Magic byte of the Confluent wire format.
pub const MAGIC: u8 = 0;
/// Length of the header before the Avro body.
pub const HEADER_LEN: usize = 5;

/// Appends the framed message (header + `body`) to `out`.
pub fn frame(schema_id: u32, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
}

/// Splits a framed message into its schema id and Avro body.
#[inline]
pub fn unframe(msg: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let Some((header, body)) = msg.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::TooShort);
    };
    if header[0] != MAGIC {
        return Err(DecodeError::BadMagic(header[0]));
    }
    let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Ok((id, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_unframe_round_trip() {
        let mut out = Vec::new();
        frame(0x0102_0304, b"body", &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, b'b', b'o', b'd', b'y']);
        assert_eq!(unframe(&out).unwrap(), (0x0102_0304, &b"body"[..]));
        // An empty body is a valid frame (e.g. a record with no fields).
        out.clear();
        frame(7, b"", &mut out);
        assert_eq!(unframe(&out).unwrap(), (7, &b""[..]));
    }

    #[test]
    fn unframe_errors() {
        assert_eq!(unframe(&[]), Err(DecodeError::TooShort));
        assert_eq!(unframe(&[0, 0, 0, 1]), Err(DecodeError::TooShort));
        let err = unframe(&[1, 0, 0, 0, 1, 2]).unwrap_err();
        assert_eq!(err, DecodeError::BadMagic(1));
        assert_eq!(err.reason(), "bad-magic");
        assert_eq!(DecodeError::TooShort.reason(), "too-short");
    }
}
