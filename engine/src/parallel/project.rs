//! A key group's share of a batch with only the columns its streams read
//! copied (pure).
//!
//! Splitting a batch by key copies each group's rows; most of that copy is
//! columns no stream evaluates (a tick's exchange, side, bid and ask for
//! an OHLC query). A share copies the columns
//! [`super::partition::columns_read`] lists and holds placeholders (zeros,
//! empty strings, no nulls, so non-nullable fields stay valid) in the
//! others, sliced from one array per column, so they cost nothing per row.
//!
//! Invariant: placeholders never leave a key group. Only windowed
//! aggregates and stateless streams read a projected share; they keep no
//! source rows, and what they emit is computed from read columns only. Two
//! kinds of rows leave as source rows: late rows and dead letters (rows a
//! stream's expression failed on). [`Restorer`] gives them their source
//! rows back, found among the share's rows by the read columns, which are
//! all the stream saw of them.

use std::collections::BTreeMap;

use arrow::array::{
    Array, ArrayRef, RecordBatch, UInt32Array, make_array, make_comparator, new_null_array,
};
use arrow::compute::{SortOptions, take, take_record_batch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

use crate::Rejected;

/// One placeholder array per column of a source, as long as the longest
/// share so far (shares take slices of it).
#[derive(Default)]
pub(crate) struct Placeholders {
    by_column: BTreeMap<usize, ArrayRef>,
}

impl Placeholders {
    /// `len` placeholder values of column `index` of type `data_type`;
    /// `None` for types without a placeholder (those columns are copied).
    fn get(&mut self, index: usize, data_type: &DataType, len: usize) -> Option<ArrayRef> {
        if let Some(a) = self.by_column.get(&index).filter(|a| a.len() >= len) {
            return Some(a.slice(0, len));
        }
        let array = placeholder(data_type, len.max(PLACEHOLDER_ROWS))?;
        self.by_column.insert(index, array.clone());
        Some(array.slice(0, len))
    }
}

/// Rows a placeholder array has at first (a batch's usual size).
const PLACEHOLDER_ROWS: usize = 8192;

/// `len` zeros (numbers, times), `false`s or empty strings, without nulls;
/// `None` for nested, dictionary and view types.
fn placeholder(data_type: &DataType, len: usize) -> Option<ArrayRef> {
    let flat = data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Binary
                | DataType::LargeBinary
        );
    if !flat {
        return None;
    }
    // A null array's buffers hold zeros (empty offsets for strings); with
    // the validity dropped, every value is the zero of its type.
    let data = new_null_array(data_type, len)
        .to_data()
        .into_builder()
        .nulls(None)
        .build()
        .ok()?;
    Some(make_array(data))
}

/// Rows `rows` of `batch`, with the columns `read` marks copied and the
/// others filled from `placeholders`.
pub(crate) fn take_read(
    batch: &RecordBatch,
    rows: &UInt32Array,
    read: &[bool],
    placeholders: &mut Placeholders,
) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let columns = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let filler = (!read.get(i).copied().unwrap_or(true))
                .then(|| placeholders.get(i, schema.field(i).data_type(), rows.len()))
                .flatten();
            match filler {
                Some(filler) => Ok(filler),
                None => take(column.as_ref(), rows, None),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// Where a share came from: the batch it was taken out of and which rows.
pub(crate) struct Origin<'a> {
    pub batch: &'a RecordBatch,
    pub rows: &'a UInt32Array,
    pub read: &'a [bool],
}

/// Gives rows that left a key group with a share's placeholders (late rows,
/// dead letters) their source rows back: each becomes the row of the share
/// equal to it in every read column, which is all a stream saw of it. Two
/// such rows fail or come late alike, so any one of them will do, but each
/// only once per stream. Streams hand out their rows in share order, so
/// the search goes on from the last row found.
pub(crate) struct Restorer<'a> {
    origin: Origin<'a>,
    /// Per stream (and kind of row): the share rows given back, and where
    /// the last one was.
    claimed: BTreeMap<String, (Vec<bool>, usize)>,
}

impl<'a> Restorer<'a> {
    pub(crate) fn new(origin: Origin<'a>) -> Self {
        Self {
            origin,
            claimed: BTreeMap::new(),
        }
    }

    /// Whether `rows` have the source's columns (those of the share).
    pub(crate) fn is_share_schema(&self, rows: &RecordBatch) -> bool {
        rows.schema().fields() == self.origin.batch.schema().fields()
    }

    /// The source rows of `rows`, which `stream` gave out; `None` when
    /// they are not rows of the share (another schema, or not found).
    pub(crate) fn source_rows(
        &mut self,
        stream: &str,
        rows: &RecordBatch,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        if !self.is_share_schema(rows) {
            return Ok(None);
        }
        let origin = &self.origin;
        let comparators = origin
            .read
            .iter()
            .enumerate()
            .filter(|&(_, &r)| r)
            .map(|(c, _)| {
                make_comparator(
                    rows.column(c).as_ref(),
                    origin.batch.column(c).as_ref(),
                    SortOptions::default(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let len = origin.rows.len();
        let (claimed, next) = self
            .claimed
            .entry(stream.to_string())
            .or_insert_with(|| (vec![false; len], 0));
        let mut found = Vec::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            let equal = |at: usize| {
                let source_row = origin.rows.value(at) as usize;
                !claimed[at] && comparators.iter().all(|cmp| cmp(row, source_row).is_eq())
            };
            match (*next..len).chain(0..*next).find(|&at| equal(at)) {
                Some(at) => {
                    claimed[at] = true;
                    *next = at + 1;
                    found.push(at);
                }
                None => {
                    found.iter().for_each(|&at| claimed[at] = false);
                    return Ok(None);
                }
            }
        }
        let source_rows: Vec<u32> = found.iter().map(|&at| origin.rows.value(at)).collect();
        take_record_batch(origin.batch, &UInt32Array::from(source_rows)).map(Some)
    }

    /// [`source_rows`](Self::source_rows) for the dead letters of `source`
    /// (rows a stream's expression failed on). A letter whose row is not
    /// found says so in its error rather than pass placeholders off as the
    /// row's values.
    pub(crate) fn dead_letters(
        &mut self,
        rejected: &mut [Rejected],
        source: &str,
    ) -> Result<(), ArrowError> {
        for r in rejected.iter_mut().filter(|r| r.source == source) {
            let stream = format!("dead letters of {:?}", r.stream);
            match self.source_rows(&stream, &r.rows)? {
                Some(rows) => r.rows = rows,
                None if self.is_share_schema(&r.rows) => {
                    r.error.push_str(UNREAD_COLUMNS_NOTE);
                }
                None => {} // a stream's own rows
            }
        }
        Ok(())
    }
}

/// Added to the error of a dead letter whose source row was not found.
const UNREAD_COLUMNS_NOTE: &str =
    " (columns the query does not read are not kept in this dead letter)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectReason;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn ticks() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("exchange", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("size", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["A", "B", "A", "A"])),
                Arc::new(StringArray::from(vec!["X", "Y", "Z", "W"])),
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    Some(2.0),
                    None,
                    Some(1.0),
                ])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_share_copies_read_columns_and_fills_the_rest_without_nulls() {
        let batch = ticks();
        let rows = UInt32Array::from(vec![0, 2, 3]);
        let read = [true, false, true, false];
        let mut cache = Placeholders::default();
        let share = take_read(&batch, &rows, &read, &mut cache).unwrap();
        let full = take_record_batch(&batch, &rows).unwrap();
        assert_eq!(share.schema(), batch.schema());
        for c in [0, 2] {
            assert_eq!(share.column(c).as_ref(), full.column(c).as_ref());
        }
        for c in [1, 3] {
            assert_eq!(
                share.column(c).null_count(),
                0,
                "non-nullable fields stay valid"
            );
            assert_ne!(share.column(c).as_ref(), full.column(c).as_ref());
        }
        // A longer share grows the cache; a shorter one slices it.
        let many = UInt32Array::from(vec![0; PLACEHOLDER_ROWS + 5]);
        assert_eq!(
            take_read(&batch, &many, &read, &mut cache)
                .unwrap()
                .num_rows(),
            PLACEHOLDER_ROWS + 5
        );
        assert_eq!(
            take_read(&batch, &rows, &read, &mut cache)
                .unwrap()
                .num_rows(),
            3
        );
    }

    #[test]
    fn dead_letters_get_their_source_rows_back() {
        let batch = ticks();
        let rows = UInt32Array::from(vec![0, 2, 3]);
        let read = [true, false, true, false];
        let share = take_read(&batch, &rows, &read, &mut Placeholders::default()).unwrap();
        let letter = |stream: &str, row: usize| Rejected {
            source: "ticks".into(),
            stream: Some(stream.into()),
            reason: RejectReason::Evaluation,
            error: "boom".into(),
            rows: share.slice(row, 1),
        };
        // Share rows 0 and 2 (source rows 0 and 3) are equal in the read
        // columns: two letters of one stream get one each; another stream's
        // letter of the same row gets the first again; a stream's own
        // output rows (another schema) stay.
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![7]))],
        )
        .unwrap();
        let mut rejected = vec![
            letter("s", 0),
            letter("s", 2),
            letter("t", 0),
            letter("s", 1),
            Rejected {
                rows: other.clone(),
                ..letter("s", 0)
            },
        ];
        let mut restorer = Restorer::new(Origin {
            batch: &batch,
            rows: &rows,
            read: &read,
        });
        restorer.dead_letters(&mut rejected, "ticks").unwrap();
        let source_row = |i: u32| take_record_batch(&batch, &UInt32Array::from(vec![i])).unwrap();
        assert_eq!(rejected[0].rows, source_row(0));
        assert_eq!(rejected[1].rows, source_row(3));
        assert_eq!(rejected[2].rows, source_row(0));
        assert_eq!(
            rejected[3].rows,
            source_row(2),
            "a null price matches a null"
        );
        assert_eq!(rejected[4].rows, other);

        // Late rows of a stream, in share order, get theirs in one pass.
        let late = share.slice(1, 2);
        let got = restorer.source_rows("late of s", &late).unwrap().unwrap();
        assert_eq!(
            got,
            take_record_batch(&batch, &UInt32Array::from(vec![2, 3])).unwrap()
        );
        // A row that is not the share's is not made up.
        let stranger = take_read(
            &batch,
            &UInt32Array::from(vec![1]),
            &read,
            &mut Placeholders::default(),
        )
        .unwrap();
        assert!(
            restorer
                .source_rows("late of s", &stranger)
                .unwrap()
                .is_none()
        );
    }
}
