//! Group keys: maps the GROUP BY values of each row to a dense group index.
//!
//! Keys are encoded with Arrow's row format (one comparable byte string per
//! row, vectorised) and interned in a hash map, the same approach DataFusion's
//! hash aggregation takes.

use std::collections::HashMap;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{Field, FieldRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;

/// Dense numbering of distinct key tuples, in first-seen order.
pub struct GroupKeys {
    fields: Vec<FieldRef>,
    /// `None` when there are no key columns: every row is group 0.
    converter: Option<RowConverter>,
    map: HashMap<Box<[u8]>, usize, ahash::RandomState>,
    rows: Option<Rows>,
    groups: usize,
}

impl GroupKeys {
    pub fn new(fields: &[FieldRef]) -> Result<Self> {
        let converter = if fields.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                fields
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?)
        };
        let rows = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Self {
            fields: fields.to_vec(),
            converter,
            // Seeded per process: keys come from input, and fixed seeds
            // let crafted keys collide. Output never depends on hash order.
            map: HashMap::with_hasher(ahash::RandomState::new()),
            rows,
            groups: 0,
        })
    }

    /// Number of distinct groups seen.
    pub fn len(&self) -> usize {
        self.groups
    }

    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }

    /// Appends the group index of every row of `columns` to `out` (cleared first).
    pub fn intern(
        &mut self,
        columns: &[ArrayRef],
        num_rows: usize,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        out.clear();
        let Some(converter) = &self.converter else {
            self.groups = self.groups.max(usize::from(num_rows > 0));
            out.resize(num_rows, 0);
            return Ok(());
        };
        let batch_rows = converter.convert_columns(columns)?;
        let rows = self.rows.as_mut().expect("rows exist with a converter");
        out.reserve(num_rows);
        for row in batch_rows.iter() {
            let bytes = row.as_ref();
            let idx = match self.map.get(bytes) {
                Some(&i) => i,
                None => {
                    let i = self.groups;
                    self.map.insert(bytes.into(), i);
                    rows.push(row);
                    self.groups += 1;
                    i
                }
            };
            out.push(idx);
        }
        Ok(())
    }

    /// The group index of every row of `columns`, `None` for keys never
    /// interned (nothing is added).
    pub fn find(&self, columns: &[ArrayRef], num_rows: usize) -> Result<Vec<Option<usize>>> {
        let Some(converter) = &self.converter else {
            return Ok(vec![(self.groups > 0).then_some(0); num_rows]);
        };
        let rows = converter.convert_columns(columns)?;
        Ok(rows
            .iter()
            .map(|row| self.map.get(row.as_ref()).copied())
            .collect())
    }

    /// The key columns of the given groups, in the order given.
    pub fn key_columns_of(&self, groups: &[usize]) -> Result<Vec<ArrayRef>> {
        match (&self.converter, &self.rows) {
            (Some(c), Some(rows)) => Ok(c.convert_rows(groups.iter().map(|&g| rows.row(g)))?),
            _ => Ok(vec![]),
        }
    }

    /// A numbering of only the `keep` groups (e.g. keys with open state), so
    /// keys never seen again stop costing memory. Returns it with each kept
    /// group's new index, in `keep` order.
    pub fn retain(&self, keep: &[usize]) -> Result<(GroupKeys, Vec<usize>)> {
        let mut fresh = GroupKeys::new(&self.fields)?;
        let mut new_index = Vec::with_capacity(keep.len());
        if self.converter.is_none() {
            fresh.groups = usize::from(!keep.is_empty());
            new_index.resize(keep.len(), 0);
            return Ok((fresh, new_index));
        }
        let columns = self.key_columns_of(keep)?;
        fresh.intern(&columns, keep.len(), &mut new_index)?;
        Ok((fresh, new_index))
    }

    /// The key columns of all groups, in group-index order.
    pub fn key_columns(&self) -> Result<Vec<ArrayRef>> {
        match (&self.converter, &self.rows) {
            (Some(c), Some(rows)) => Ok(c.convert_rows(rows.iter())?),
            _ => Ok(vec![]),
        }
    }
}

/// A dense number per distinct value of `exprs` over `batch` (hashed, so
/// sorting and splitting by it compare integers, not keys), numbered in
/// first-seen order; all zeros without expressions.
///
/// A one-off numbering, so it uses DataFusion's group values, which have
/// specialised forms for a single string or primitive key; [`GroupKeys`]
/// is for numberings that live on (it can give keys back and forget them).
pub fn dense_ids(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<ArrayRef> {
    use datafusion::physical_plan::aggregates::group_values::new_group_values;
    use datafusion::physical_plan::aggregates::order::GroupOrdering;
    if exprs.is_empty() {
        return Ok(Arc::new(UInt32Array::from(vec![0; batch.num_rows()])));
    }
    let keys = exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect::<Result<Vec<_>>>()?;
    let fields: Vec<Field> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Field::new(format!("key{i}"), k.data_type().clone(), true))
        .collect();
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let mut ids = Vec::with_capacity(batch.num_rows());
    new_group_values(schema, &GroupOrdering::None)?.intern(&keys, &mut ids)?;
    Ok(Arc::new(UInt32Array::from_iter_values(
        ids.into_iter().map(|i| i as u32),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn dense_ids_number_keys_in_first_seen_order_with_nulls_as_one_key() {
        use datafusion::physical_expr::expressions::col;
        let schema = arrow::datatypes::Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("b"),
                    None,
                    Some("b"),
                    None,
                    Some("a"),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(2),
                    None,
                    Some(1),
                ])),
            ],
        )
        .unwrap();
        let ids = |names: &[&str]| {
            let exprs: Vec<_> = names.iter().map(|n| col(n, &schema).unwrap()).collect();
            let ids = dense_ids(&exprs, &batch).unwrap();
            ids.as_any()
                .downcast_ref::<UInt32Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        assert_eq!(ids(&["s"]), vec![0, 1, 0, 1, 2]);
        assert_eq!(ids(&["n"]), vec![0, 1, 2, 1, 0]);
        assert_eq!(ids(&["s", "n"]), vec![0, 1, 2, 1, 3]);
        assert_eq!(ids(&[]), vec![0; 5]);
    }

    #[test]
    fn interns_in_first_seen_order() {
        let fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("s", DataType::Utf8, false)),
            Arc::new(Field::new("n", DataType::Int64, true)),
        ];
        let mut keys = GroupKeys::new(&fields).unwrap();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["b", "a", "b", "a"])),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(1), Some(2)])),
        ];
        let mut idx = Vec::new();
        keys.intern(&cols, 4, &mut idx).unwrap();
        assert_eq!(idx, vec![0, 1, 0, 2]);
        let back = keys.key_columns().unwrap();
        assert_eq!(
            back[0].as_ref(),
            &StringArray::from(vec!["b", "a", "a"]) as &dyn arrow::array::Array
        );
        assert_eq!(
            back[1].as_ref(),
            &Int64Array::from(vec![Some(1), None, Some(2)]) as &dyn arrow::array::Array
        );
    }

    #[test]
    fn retain_keeps_only_live_keys() {
        let fields: Vec<FieldRef> = vec![Arc::new(Field::new("s", DataType::Utf8, false))];
        let mut keys = GroupKeys::new(&fields).unwrap();
        let cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["a", "b", "c", "d"]))];
        let mut idx = Vec::new();
        keys.intern(&cols, 4, &mut idx).unwrap();
        let (fresh, new_idx) = keys.retain(&[3, 1]).unwrap();
        assert_eq!(fresh.len(), 2);
        assert_eq!(new_idx, vec![0, 1]);
        assert_eq!(
            fresh.key_columns().unwrap()[0].as_ref(),
            &StringArray::from(vec!["d", "b"]) as &dyn arrow::array::Array
        );
        // A retained key keeps its identity in the new numbering.
        let mut fresh = fresh;
        let again: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["b", "e"]))];
        fresh.intern(&again, 2, &mut idx).unwrap();
        assert_eq!(idx, vec![1, 2]);
    }

    #[test]
    fn no_keys_means_one_group() {
        let mut keys = GroupKeys::new(&[]).unwrap();
        let mut idx = Vec::new();
        keys.intern(&[], 3, &mut idx).unwrap();
        assert_eq!(idx, vec![0, 0, 0]);
        assert_eq!(keys.len(), 1);
    }
}
