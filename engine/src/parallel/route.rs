//! Which key group a row belongs to, and a batch split by key group (pure).
//!
//! The hash is FNV-1a over the key's bytes (a string's UTF-8, an integer's
//! value as 8 little-endian bytes), written out here rather than taken from
//! a hashing crate: checkpoints hold each key group's state, so the
//! function must give the same group in every process and every release.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use arrow::error::ArrowError;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The key group of every row of `key` (`groups` ≥ 1). Nulls go to group 0.
pub fn key_groups(key: &ArrayRef, groups: usize) -> Result<Vec<u32>, ArrowError> {
    let n = groups as u64;
    let of = |h: u64| (h % n) as u32;
    let ints = |values: &mut dyn Iterator<Item = Option<u64>>| -> Vec<u32> {
        values
            .map(|v| v.map_or(0, |v| of(fnv1a(&v.to_le_bytes()))))
            .collect()
    };
    Ok(match key.data_type() {
        DataType::Utf8 => strings(key.as_string::<i32>().iter(), of),
        DataType::LargeUtf8 => strings(key.as_string::<i64>().iter(), of),
        DataType::Utf8View => strings(key.as_string_view().iter(), of),
        DataType::UInt64 => ints(&mut key.as_primitive::<UInt64Type>().iter()),
        // Every other integer fits an i64 as it is; its bits are the hash's input.
        t if t.is_integer() => {
            let wide = cast(key, &DataType::Int64)?;
            ints(
                &mut wide
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.map(|v| v as u64)),
            )
        }
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "cannot split rows by a key of type {other}"
            )));
        }
    })
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>, of: impl Fn(u64) -> u32) -> Vec<u32> {
    values
        .map(|v| v.map_or(0, |s| of(fnv1a(s.as_bytes()))))
        .collect()
}

/// `batch` split by the key group of column `key` of each row: one entry
/// per group, `None` where the group gets no rows. Rows keep their order
/// within a group.
pub fn split(
    batch: &RecordBatch,
    key: usize,
    groups: usize,
) -> Result<Vec<Option<RecordBatch>>, ArrowError> {
    let all: Vec<usize> = (0..groups).collect();
    split_for(batch, key, groups, &all)
}

/// The shares of `wanted` groups only (in `wanted`'s order) of `batch`
/// split into `groups` as [`split`] does: each thread takes its own groups'
/// rows, so the copying is spread over the threads.
pub fn split_for(
    batch: &RecordBatch,
    key: usize,
    groups: usize,
    wanted: &[usize],
) -> Result<Vec<Option<RecordBatch>>, ArrowError> {
    match route_for(batch, key, groups, wanted)? {
        Routed::Whole(group) => Ok(wanted
            .iter()
            .map(|&g| (g == group).then(|| batch.clone()))
            .collect()),
        Routed::Rows(rows) => rows
            .into_iter()
            .map(|rows| match rows.len() {
                0 => Ok(None),
                _ => take_record_batch(batch, &UInt32Array::from(rows)).map(Some),
            })
            .collect(),
    }
}

/// Where the rows of a batch go, for some of the groups.
pub enum Routed {
    /// Every row to this group.
    Whole(usize),
    /// The rows of each wanted group (in the caller's order), in order.
    Rows(Vec<Vec<u32>>),
}

/// Which rows of `batch` each of the `wanted` groups gets when it is split
/// into `groups` by column `key`.
pub fn route_for(
    batch: &RecordBatch,
    key: usize,
    groups: usize,
    wanted: &[usize],
) -> Result<Routed, ArrowError> {
    if groups == 1 {
        return Ok(Routed::Whole(0));
    }
    let of_row = key_groups(batch.column(key), groups)?;
    if let Some(&first) = of_row.first()
        && of_row.iter().all(|&g| g == first)
    {
        return Ok(Routed::Whole(first as usize));
    }
    // Where each wanted group's share goes, by group number.
    let mut slot: Vec<Option<usize>> = vec![None; groups];
    for (i, &g) in wanted.iter().enumerate() {
        slot[g] = Some(i);
    }
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); wanted.len()];
    for (i, &g) in of_row.iter().enumerate() {
        if let Some(s) = slot[g as usize] {
            rows[s].push(i as u32);
        }
    }
    Ok(Routed::Rows(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn of_u64(h: u64, groups: u64) -> u32 {
        (h % groups) as u32
    }

    #[test]
    fn the_same_key_lands_in_the_same_group_whatever_the_batch() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("AAPL"), Some("MSFT"), None]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["MSFT", "AAPL"]));
        let ga = key_groups(&a, 8).unwrap();
        let gb = key_groups(&b, 8).unwrap();
        assert_eq!((ga[0], ga[1], ga[2]), (gb[1], gb[0], 0));
    }

    #[test]
    fn the_hash_is_fixed_so_checkpoints_keep_their_meaning() {
        // FNV-1a 64 of "AAPL" is 0x…; changing the function would move
        // keys away from the state a checkpoint holds for them.
        assert_eq!(fnv1a(b""), FNV_OFFSET);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![7, 7, 8]));
        let g = key_groups(&ints, 1000).unwrap();
        assert_eq!(g[0], g[1]);
        // An integer hashes by value, whatever its width or sign.
        assert_eq!(g[0], of_u64(fnv1a(&7u64.to_le_bytes()), 1000));
        let narrow: ArrayRef = Arc::new(arrow::array::UInt16Array::from(vec![7]));
        let signed: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![7, -1]));
        assert_eq!(key_groups(&narrow, 1000).unwrap()[0], g[0]);
        let s = key_groups(&signed, 1000).unwrap();
        assert_eq!(s[0], g[0]);
        assert_eq!(s[1], of_u64(fnv1a(&(-1i64).to_le_bytes()), 1000));
    }

    #[test]
    fn a_thread_s_share_is_its_groups_part_of_the_whole_split() {
        let symbols: Vec<String> = (0..50).map(|i| format!("K{i}")).collect();
        let batch = RecordBatch::try_from_iter([(
            "symbol",
            Arc::new(StringArray::from(symbols)) as ArrayRef,
        )])
        .unwrap();
        let whole = split(&batch, 0, 4).unwrap();
        let mine = split_for(&batch, 0, 4, &[3, 1]).unwrap();
        assert_eq!(mine, vec![whole[3].clone(), whole[1].clone()]);
        // With one group, that group gets the whole batch.
        let one = split_for(&batch, 0, 1, &[0]).unwrap();
        assert_eq!(one, vec![Some(batch.clone())]);
    }

    #[test]
    fn a_split_keeps_every_row_once_and_in_order() {
        let symbols: Vec<String> = (0..100).map(|i| format!("S{i}")).collect();
        let batch = RecordBatch::try_from_iter([
            (
                "symbol",
                Arc::new(StringArray::from(symbols.clone())) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
            ),
        ])
        .unwrap();
        let parts = split(&batch, 0, 4).unwrap();
        let mut seen: Vec<i64> = Vec::new();
        for (g, part) in parts.iter().enumerate() {
            let part = part.as_ref().expect("100 keys fill 4 groups");
            let n = part.column(1).as_primitive::<Int64Type>();
            assert!(n.values().windows(2).all(|w| w[0] < w[1]));
            let groups = key_groups(part.column(0), 4).unwrap();
            assert!(groups.iter().all(|&x| x as usize == g));
            seen.extend(n.values().iter());
        }
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }
}
