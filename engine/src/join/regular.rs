//! Regular joins: two tables joined on equal keys, without time bounds.
//!
//! Each side is read as a table by its key ([`JoinSide::identity`]): an
//! updating stream by its upserts and deletions; an append table or stream
//! by its `'key'`, the row with the latest event time being current (a
//! later arrival wins a tie). A row the side's subquery filters out takes
//! its key out of the table. The result is an updating stream: after every
//! input batch, each left row the batch touched (its own change, or a
//! change of a right row with its join key) is joined again, and what
//! differs from what was emitted for it goes out as upserts and deletions
//! by the output key ([`JoinPlan::output_keys`]).
//!
//! State grows with the keys of both tables. `'state.ttl'` forgets a key
//! of an append side once its row is that far behind the side's watermark;
//! its pairs are deleted, as a GROUP BY's expired keys are. The end of
//! input is not time passing: nothing expires then.
//!
//! Invariant: `emitted` is a function of the two tables (changes go out at
//! the end of every batch and checkpoints fall between batches), so a
//! restore recomputes it instead of storing it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ahash::{HashMap, HashMapExt, HashSet};
use indexmap::IndexSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt8Array, UInt32Array,
    new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};

use super::{
    JoinCondition, JoinKind, JoinPlan, JoinSide, LEFT, RIGHT, SIDE, restore_meta, state_meta,
};
use crate::operator::{
    OperatorMetrics, OperatorState, Output, StreamOperator, check_state_layout, conform, evaluate,
    evaluate_mask, evaluate_rows, event_times,
};
use crate::plan::{apply_steps_tracked, traces_to};
use crate::watermark::{END_OF_INPUT, NO_WATERMARK};

/// Arrow row bytes (of a key, an identity or a whole row).
type Bytes = Box<[u8]>;

/// State columns besides the sides' own.
const TS: &str = "__tickflow_ts";
const LIVE: &str = "__tickflow_live";

/// The current row of one key of a side's table.
struct Entry {
    /// The row in the side's join columns; `None` when its newest row was
    /// filtered out by the side's subquery (kept so an older row arriving
    /// later does not come back).
    row: Option<Bytes>,
    /// The join key; `None` when a key column is null or there is no row.
    key: Option<Bytes>,
    /// Event time of the row (append-only sides).
    ts: Option<i64>,
}

/// One side's table.
struct Table {
    /// Rows in the side's join columns.
    rows: RowConverter,
    /// The side's identity columns.
    identity: RowConverter,
    entries: HashMap<Bytes, Entry>,
    /// Identities with a row, by join key.
    by_key: HashMap<Bytes, HashSet<Bytes>>,
    /// (event time, identity) of append rows, for `'state.ttl'`; stale
    /// pairs (the key has a newer row) are skipped when popped.
    expiry: BinaryHeap<Reverse<(i64, Bytes)>>,
}

impl Table {
    fn new(side: &JoinSide) -> Result<Self> {
        let sort = |fields: Vec<&FieldRef>| {
            RowConverter::new(
                fields
                    .into_iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
        };
        Ok(Self {
            rows: sort(side.schema.fields().iter().collect())?,
            identity: sort(
                side.identity
                    .iter()
                    .map(|&i| &side.schema.fields()[i])
                    .collect(),
            )?,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            expiry: BinaryHeap::new(),
        })
    }

    /// Sets `identity`'s entry (`ttl`: it may expire); returns the one it
    /// replaces.
    fn put(&mut self, identity: Bytes, entry: Entry, ttl: bool) -> Option<Entry> {
        let old = self.remove(&identity);
        if let (Some(key), Some(_)) = (&entry.key, &entry.row) {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(identity.clone());
        }
        if let (true, Some(ts)) = (ttl, entry.ts) {
            self.expiry.push(Reverse((ts, identity.clone())));
        }
        self.entries.insert(identity, entry);
        old
    }

    fn remove(&mut self, identity: &[u8]) -> Option<Entry> {
        let old = self.entries.remove(identity)?;
        if let (Some(key), Some(_)) = (&old.key, &old.row)
            && let Some(ids) = self.by_key.get_mut(key)
        {
            ids.remove(identity);
            if ids.is_empty() {
                self.by_key.remove(key);
            }
        }
        Some(old)
    }

    fn live(&self) -> usize {
        self.entries.values().filter(|e| e.row.is_some()).count()
    }
}

/// Encodes join keys of either side in the left keys' types.
struct KeyEncoder {
    fields: Vec<DataType>,
    converter: RowConverter,
}

impl KeyEncoder {
    fn new(plan: &JoinPlan) -> Result<Self> {
        let fields = plan
            .left
            .keys
            .iter()
            .map(|k| k.data_type(&plan.left.schema))
            .collect::<Result<Vec<_>>>()?;
        let converter =
            RowConverter::new(fields.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(Self { fields, converter })
    }

    /// The join key of each row (`None` if a key column is null: it never
    /// matches).
    fn encode(&self, side: &JoinSide, rows: &RecordBatch) -> Result<Vec<Option<Bytes>>> {
        let columns = side
            .keys
            .iter()
            .zip(&self.fields)
            .map(|(k, t)| {
                let c = evaluate(k, rows)?;
                match c.data_type() == t {
                    true => Ok(c),
                    false => Ok(arrow::compute::cast(&c, t)?),
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let encoded = self.converter.convert_columns(&columns)?;
        Ok((0..rows.num_rows())
            .map(|i| {
                columns
                    .iter()
                    .all(|c| c.is_valid(i))
                    .then(|| encoded.row(i).as_ref().into())
            })
            .collect())
    }
}

/// What one input row does to its side's table.
enum Change {
    /// Its key's row becomes this one (or, `row: None`, leaves the table).
    Put(Bytes, Entry),
    /// An expression failed on it (a dead letter): no change.
    Failed,
}

pub struct RegularJoin {
    plan: JoinPlan,
    output_schema: SchemaRef,
    ttl_ms: Option<i64>,
    keys: KeyEncoder,
    tables: [Table; 2],
    /// Where each side's event time is among its input's columns (append
    /// sides).
    input_event_time: [Option<usize>; 2],
    /// What was emitted for each left identity: (output key, output row).
    emitted: HashMap<Bytes, Vec<(Bytes, Bytes)>>,
    output_keys: RowConverter,
    output_rows: RowConverter,
    watermarks: [i64; 2],
    metrics: OperatorMetrics,
}

impl RegularJoin {
    pub fn new(plan: JoinPlan, output_schema: SchemaRef) -> Result<Self> {
        let JoinCondition::Regular { ttl_ms } = plan.condition else {
            return Err(DataFusionError::Internal(
                "a regular join has no time bounds".into(),
            ));
        };
        let sort = |indices: &mut dyn Iterator<Item = usize>| {
            RowConverter::new(
                indices
                    .map(|i| SortField::new(output_schema.field(i).data_type().clone()))
                    .collect(),
            )
        };
        let input_event_time = [&plan.left, &plan.right]
            .map(|s| s.event_time_index.and_then(|i| traces_to(&s.steps, i)));
        Ok(Self {
            keys: KeyEncoder::new(&plan)?,
            tables: [Table::new(&plan.left)?, Table::new(&plan.right)?],
            output_keys: sort(&mut plan.output_keys.iter().copied())?,
            output_rows: sort(&mut (0..output_schema.fields().len()))?,
            input_event_time,
            ttl_ms,
            plan,
            output_schema,
            emitted: HashMap::new(),
            watermarks: [NO_WATERMARK; 2],
            metrics: OperatorMetrics::default(),
        })
    }

    fn side(&self, side: usize) -> &JoinSide {
        if side == LEFT {
            &self.plan.left
        } else {
            &self.plan.right
        }
    }

    /// What each row of a batch of `side`'s input does to its table.
    fn changes(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<Vec<Change>> {
        let plan_side = self.side(side);
        let mut identity: Vec<Option<Bytes>> =
            identities(&self.tables[side].identity, plan_side, batch)?
                .into_iter()
                .map(Some)
                .collect();
        let ts = match self.input_event_time[side] {
            Some(i) => Some(event_times(batch, i)?.0),
            None => None,
        };
        // The side's subquery and keys, tracked to the input rows; rows
        // they fail on are dead letters and change nothing.
        let mut changes: Vec<Option<Change>> = (0..batch.num_rows()).map(|_| None).collect();
        let eval = |b: &RecordBatch| -> Result<(RecordBatch, UInt32Array, Vec<Option<Bytes>>)> {
            let (rows, kept) = apply_steps_tracked(&plan_side.steps, b, &plan_side.schema)?;
            let keys = self.keys.encode(plan_side, &rows)?;
            Ok((rows, kept, keys))
        };
        let before = out.rejected.len();
        // Each row's change is set once (filtered out, or kept), so its
        // identity moves into it.
        let mut put = |p: usize, row: Option<Bytes>, key: Option<Bytes>| {
            let ts = ts.as_ref().map(|t| t[p]);
            let id = identity[p].take().expect("one change per input row");
            Some(Change::Put(id, Entry { row, key, ts }))
        };
        for ((rows, kept, keys), positions) in evaluate_tracked(batch, out, eval)? {
            let bytes = self.tables[side].rows.convert_columns(rows.columns())?;
            let mut is_kept = vec![false; positions.len()];
            for (r, (&local, key)) in kept.values().iter().zip(keys).enumerate() {
                is_kept[local as usize] = true;
                let p = positions.value(local as usize) as usize;
                changes[p] = put(p, Some(bytes.row(r).as_ref().into()), key);
            }
            // Rows the subquery filtered out leave the table.
            for (&p, _) in positions
                .values()
                .iter()
                .zip(&is_kept)
                .filter(|(_, k)| !**k)
            {
                changes[p as usize] = put(p as usize, None, None);
            }
        }
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        Ok(changes
            .into_iter()
            .map(|c| c.unwrap_or(Change::Failed))
            .collect())
    }

    /// Applies a change to `side`'s table; adds the left identities whose
    /// result it may change to `touched`.
    fn apply(&mut self, side: usize, identity: Bytes, entry: Entry, touched: &mut Touched) {
        let append = !self.side(side).changelog;
        let table = &mut self.tables[side];
        // An append table's current row is its latest in event time.
        if append
            && let (Some(current), Some(ts)) = (table.entries.get(&identity), entry.ts)
            && current.ts.is_some_and(|c| c > ts)
        {
            return;
        }
        if entry.row.is_none() && !append {
            self.remove(side, identity, touched);
            return;
        }
        let ttl = append && self.ttl_ms.is_some();
        if side == LEFT {
            // A left row's own results change: only its identity matters.
            table.put(identity.clone(), entry, ttl);
            touched.add(identity);
        } else {
            // A right row changes the results of the left rows under its
            // old and new join keys.
            let new_key = entry.key.clone();
            let old = table.put(identity, entry, ttl);
            self.touch_right_keys([old.and_then(|o| o.key), new_key], touched);
        }
    }

    fn remove(&mut self, side: usize, identity: Bytes, touched: &mut Touched) {
        let old = self.tables[side].remove(&identity);
        if side == LEFT {
            touched.add(identity);
        } else {
            self.touch_right_keys([old.and_then(|o| o.key), None], touched);
        }
    }

    /// Adds the left rows under the join keys a right row had or has.
    fn touch_right_keys(&self, keys: [Option<Bytes>; 2], touched: &mut Touched) {
        for key in keys.into_iter().flatten() {
            if let Some(ids) = self.tables[LEFT].by_key.get(&key) {
                for id in ids {
                    touched.add(id.clone());
                }
            }
        }
    }

    /// Joins the touched left rows again and emits what changed.
    fn recompute(&mut self, touched: Touched, out: &mut Output) -> Result<()> {
        if touched.order.is_empty() {
            return Ok(());
        }
        let before = out.rejected.len();
        let owners: Vec<Bytes> = touched.order.into_iter().collect();
        let (joined, owner_of) = self.join_rows(&owners, out)?;
        // Each owner's result rows: (output key, output row, where it is).
        let mut fresh: Vec<Vec<(Bytes, Bytes, usize, u32)>> = vec![Vec::new(); owners.len()];
        let mut output_batches = Vec::new();
        if joined.num_rows() > 0 {
            let (post, schema) = (&self.plan.post, &self.output_schema);
            let eval = |b: &RecordBatch| apply_steps_tracked(post, b, schema);
            for ((rows, kept), positions) in evaluate_tracked(&joined, out, eval)? {
                let key_columns: Vec<ArrayRef> = self
                    .plan
                    .output_keys
                    .iter()
                    .map(|&i| Arc::clone(rows.column(i)))
                    .collect();
                let keys = self.output_keys.convert_columns(&key_columns)?;
                let whole = self.output_rows.convert_columns(rows.columns())?;
                let b = output_batches.len();
                for (r, &local) in kept.values().iter().enumerate() {
                    let owner = owner_of[positions.value(local as usize) as usize];
                    let (key, row) = (keys.row(r).as_ref().into(), whole.row(r).as_ref().into());
                    fresh[owner].push((key, row, b, r as u32));
                }
                output_batches.push(rows);
            }
        }
        self.metrics.rejected_rows += (out.rejected.len() - before) as u64;
        // Which rows are new or changed, and which emitted keys are gone.
        let mut changed: Vec<Vec<u32>> = vec![Vec::new(); output_batches.len()];
        let mut deleted: Vec<Bytes> = Vec::new();
        for (id, rows) in owners.into_iter().zip(fresh) {
            let old = self.emitted.remove(&id).unwrap_or_default();
            for (key, row, b, r) in &rows {
                if !old.iter().any(|(k, o)| k == key && o == row) {
                    changed[*b].push(*r);
                }
            }
            for (key, _) in &old {
                if !rows.iter().any(|(k, ..)| k == key) {
                    deleted.push(key.clone());
                }
            }
            if !rows.is_empty() {
                let rows = rows.into_iter().map(|(k, r, ..)| (k, r)).collect();
                self.emitted.insert(id, rows);
            }
        }
        self.emit_changes(output_batches, changed, deleted, out)
    }

    /// The joined rows (left columns, right columns) of the `owners`' left
    /// rows: their pairs that pass the rest of ON, and for a LEFT join a
    /// row with nulls where none does; with each row's owner.
    fn join_rows(&self, owners: &[Bytes], out: &mut Output) -> Result<(RecordBatch, Vec<usize>)> {
        let [left, right] = &self.tables;
        let mut pair_left: Vec<&[u8]> = Vec::new();
        let mut pair_right: Vec<&[u8]> = Vec::new();
        let mut pair_owner: Vec<usize> = Vec::new();
        let mut live: Vec<Option<&[u8]>> = Vec::with_capacity(owners.len());
        for (o, id) in owners.iter().enumerate() {
            let Some(entry) = left.entries.get(id) else {
                live.push(None);
                continue;
            };
            let Some(row) = &entry.row else {
                live.push(None);
                continue;
            };
            live.push(Some(row));
            let partners = entry.key.as_ref().and_then(|k| right.by_key.get(k));
            for rid in partners.into_iter().flatten() {
                if let Some(r) = right.entries.get(rid).and_then(|e| e.row.as_deref()) {
                    pair_left.push(row);
                    pair_right.push(r);
                    pair_owner.push(o);
                }
            }
        }
        let pairs = self.joined(&pair_left, Some(&pair_right))?;
        let mut matched = vec![false; owners.len()];
        let mut parts = Vec::new();
        let mut owner_of = Vec::new();
        if pairs.num_rows() > 0 {
            // The rest of ON; a pair it fails on is a dead letter.
            let passing = match &self.plan.residual {
                None => pairs,
                Some(residual) => {
                    let mut pass = vec![false; pairs.num_rows()];
                    let eval = |b: &RecordBatch| evaluate_mask(residual, b);
                    for (mask, positions) in evaluate_tracked(&pairs, out, eval)? {
                        for (m, &p) in mask.iter().zip(positions.values()) {
                            pass[p as usize] = m == Some(true);
                        }
                    }
                    pair_owner = pair_owner
                        .into_iter()
                        .zip(&pass)
                        .filter_map(|(o, &p)| p.then_some(o))
                        .collect();
                    filter_record_batch(&pairs, &BooleanArray::from(pass))?
                }
            };
            for &o in &pair_owner {
                matched[o] = true;
            }
            owner_of.extend(pair_owner);
            parts.push(passing);
        }
        if self.plan.kind == JoinKind::Left {
            let unmatched: Vec<(usize, &[u8])> = live
                .iter()
                .enumerate()
                .filter_map(|(o, row)| row.filter(|_| !matched[o]).map(|r| (o, r)))
                .collect();
            let rows: Vec<&[u8]> = unmatched.iter().map(|(_, r)| *r).collect();
            parts.push(self.joined(&rows, None)?);
            owner_of.extend(unmatched.iter().map(|(o, _)| *o));
        }
        Ok((concat_batches(&self.plan.joined_schema, &parts)?, owner_of))
    }

    /// Joined rows from left row bytes and right row bytes (or nulls).
    fn joined(&self, left: &[&[u8]], right: Option<&[&[u8]]>) -> Result<RecordBatch> {
        let n = left.len();
        let decode = |table: &Table, rows: &[&[u8]]| -> Result<Vec<ArrayRef>> {
            let parser = table.rows.parser();
            Ok(table
                .rows
                .convert_rows(rows.iter().map(|r| parser.parse(r)))?)
        };
        let mut columns = decode(&self.tables[LEFT], left)?;
        match right {
            Some(right) => columns.extend(decode(&self.tables[RIGHT], right)?),
            None => columns.extend(
                self.plan
                    .right
                    .schema
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n)),
            ),
        }
        let schema = &self.plan.joined_schema;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            conform(schema, columns)?,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// Emits the changed rows of `batches` (upserts) and the deleted keys.
    fn emit_changes(
        &mut self,
        batches: Vec<RecordBatch>,
        changed: Vec<Vec<u32>>,
        deleted: Vec<Bytes>,
        out: &mut Output,
    ) -> Result<()> {
        if !deleted.is_empty() {
            let parser = self.output_keys.parser();
            let keys = self
                .output_keys
                .convert_rows(deleted.iter().map(|k| parser.parse(k)))?;
            let n = deleted.len();
            let mut columns: Vec<ArrayRef> = self
                .output_schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect();
            for (&i, key) in self.plan.output_keys.iter().zip(keys) {
                columns[i] = key;
            }
            out.deletes.push(RecordBatch::try_new(
                Arc::clone(&self.output_schema),
                columns,
            )?);
            self.metrics.rows_out += n as u64;
        }
        for (rows, take) in batches.into_iter().zip(changed) {
            if take.is_empty() {
                continue;
            }
            let take = UInt32Array::from(take);
            self.metrics.rows_out += take.len() as u64;
            out.rows.push(take_record_batch(&rows, &take)?);
        }
        Ok(())
    }

    /// Forgets append rows that `'state.ttl'` puts behind their side's
    /// watermark.
    fn expire(&mut self, touched: &mut Touched) {
        let Some(ttl) = self.ttl_ms else { return };
        for side in [LEFT, RIGHT] {
            let wm = self.watermarks[side];
            if self.side(side).changelog || wm == NO_WATERMARK || wm == END_OF_INPUT {
                continue;
            }
            let cutoff = wm.saturating_sub(ttl);
            while let Some(Reverse((ts, _))) = self.tables[side].expiry.peek()
                && *ts < cutoff
            {
                let Some(Reverse((ts, id))) = self.tables[side].expiry.pop() else {
                    break;
                };
                // Stale: the key has a newer row since.
                if self.tables[side].entries.get(&id).and_then(|e| e.ts) == Some(ts) {
                    self.remove(side, id, touched);
                }
            }
            let table = &mut self.tables[side];
            if table.expiry.len() > 2 * table.entries.len() + 1024 {
                table.expiry = table
                    .entries
                    .iter()
                    .filter_map(|(id, e)| e.ts.map(|t| Reverse((t, id.clone()))))
                    .collect();
            }
        }
    }

    /// The checkpoint layout: side, event time, whether the key has a row,
    /// then the left and the right join columns (a row fills only its own
    /// side's; a key without a row only its identity columns).
    fn state_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(SIDE, DataType::UInt8, false),
            Field::new(TS, DataType::Int64, true),
            Field::new(LIVE, DataType::Boolean, false),
        ];
        for side in [&self.plan.left, &self.plan.right] {
            fields.extend(
                side.schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true)),
            );
        }
        Arc::new(Schema::new(fields))
    }

    /// One side's table in [`Self::state_schema`].
    fn side_state(&self, side: usize) -> Result<RecordBatch> {
        let table = &self.tables[side];
        let plan_side = self.side(side);
        let entries: Vec<(&Bytes, &Entry)> = table.entries.iter().collect();
        let n = entries.len();
        // Rows where the key has one; identity columns alone where not.
        let rows_parser = table.rows.parser();
        let live: Vec<&[u8]> = entries
            .iter()
            .filter_map(|(_, e)| e.row.as_deref())
            .collect();
        let live_columns = table
            .rows
            .convert_rows(live.iter().map(|r| rows_parser.parse(r)))?;
        let id_parser = table.identity.parser();
        let ids = table
            .identity
            .convert_rows(entries.iter().map(|(id, _)| id_parser.parse(id)))?;
        let live_mask = BooleanArray::from_iter(entries.iter().map(|(_, e)| Some(e.row.is_some())));
        // Live rows' values where there is a row, the identity (or null)
        // elsewhere.
        let side_columns = live_columns
            .iter()
            .enumerate()
            .map(|(c, values)| {
                let elsewhere = match plan_side.identity.iter().position(|&i| i == c) {
                    Some(k) => Arc::clone(&ids[k]),
                    None => new_null_array(plan_side.schema.field(c).data_type(), n),
                };
                spread_into(values, &live_mask, &elsewhere)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(vec![side as u8; n])),
            Arc::new(Int64Array::from_iter(entries.iter().map(|(_, e)| e.ts))),
            Arc::new(live_mask),
        ];
        for s in [LEFT, RIGHT] {
            if s == side {
                columns.extend(side_columns.iter().cloned());
            } else {
                columns.extend(
                    self.side(s)
                        .schema
                        .fields()
                        .iter()
                        .map(|f| new_null_array(f.data_type(), n)),
                );
            }
        }
        let schema = self.state_schema();
        Ok(RecordBatch::try_new(
            Arc::clone(&schema),
            conform(&schema, columns)?,
        )?)
    }

    /// Reads one side's table back from a state batch.
    fn restore_side(&mut self, batch: &RecordBatch, side: usize) -> Result<()> {
        let sides = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let mask = BooleanArray::from_iter(sides.iter().map(|s| Some(s == Some(side as u8))));
        let mine = filter_record_batch(batch, &mask)?;
        let left_width = self.plan.left.schema.fields().len();
        let range = match side {
            LEFT => 3..3 + left_width,
            _ => 3 + left_width..mine.num_columns(),
        };
        let plan_side = self.side(side);
        let rows = RecordBatch::try_new(
            Arc::clone(&plan_side.schema),
            mine.columns()[range].to_vec(),
        )?;
        let ts = mine
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
        let live = mine.column(2).as_boolean().clone();
        let ids = self.tables[side].identity.convert_columns(
            &plan_side
                .identity
                .iter()
                .map(|&i| Arc::clone(rows.column(i)))
                .collect::<Vec<_>>(),
        )?;
        let bytes = self.tables[side].rows.convert_columns(rows.columns())?;
        let keys = self.keys.encode(plan_side, &rows)?;
        let ttl = !plan_side.changelog && self.ttl_ms.is_some();
        for (i, key) in keys.into_iter().enumerate() {
            let has_row = live.value(i);
            let entry = Entry {
                row: has_row.then(|| bytes.row(i).as_ref().into()),
                key: key.filter(|_| has_row),
                ts: ts.is_valid(i).then(|| ts.value(i)),
            };
            self.tables[side].put(ids.row(i).as_ref().into(), entry, ttl);
        }
        Ok(())
    }
}

/// Left identities whose result rows may have changed, in first-touch order.
#[derive(Default)]
struct Touched {
    order: IndexSet<Bytes, ahash::RandomState>,
}

impl Touched {
    fn add(&mut self, id: Bytes) {
        self.order.insert(id);
    }
}

/// The identity of each input row (its table key, from the input's own
/// columns).
fn identities(
    converter: &RowConverter,
    side: &JoinSide,
    batch: &RecordBatch,
) -> Result<Vec<Bytes>> {
    let columns: Vec<ArrayRef> = side
        .identity_input
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    let rows = converter.convert_columns(&columns)?;
    Ok(rows.iter().map(|r| r.as_ref().into()).collect())
}

/// `values` (one per true of `mask`) at the true places of `mask`, and
/// `elsewhere`'s values at the false ones.
fn spread_into(values: &ArrayRef, mask: &BooleanArray, elsewhere: &ArrayRef) -> Result<ArrayRef> {
    let mut next = 0usize;
    let indices: Vec<(usize, usize)> = mask
        .values()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m {
                next += 1;
                (0, next - 1)
            } else {
                (1, i)
            }
        })
        .collect();
    let elsewhere = match elsewhere.data_type() == values.data_type() {
        true => Arc::clone(elsewhere),
        false => arrow::compute::cast(elsewhere, values.data_type())?,
    };
    Ok(arrow::compute::interleave(
        &[values.as_ref(), elsewhere.as_ref()],
        &indices,
    )?)
}

/// Runs `eval` over `batch` as [`evaluate_rows`] does (rows it fails on
/// go to the dead letters, without the tracking column), and returns
/// each evaluated part's value with the indices of its rows in `batch`.
fn evaluate_tracked<T>(
    batch: &RecordBatch,
    out: &mut Output,
    eval: impl Fn(&RecordBatch) -> Result<T>,
) -> Result<Vec<(T, UInt32Array)>> {
    let width = batch.num_columns();
    let mut fields: Vec<FieldRef> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        "__tickflow_row",
        DataType::UInt32,
        false,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(UInt32Array::from_iter_values(
        0..batch.num_rows() as u32,
    )));
    let tracked = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let body = |b: &RecordBatch| b.project(&(0..width).collect::<Vec<_>>());
    let mut parts = Vec::new();
    let before = out.rejected.len();
    evaluate_rows(
        &tracked,
        out,
        &|b: &RecordBatch| eval(&body(b)?),
        &mut |b: &RecordBatch, v, _: &mut Output| {
            parts.push((
                v,
                b.column(width)
                    .as_primitive::<arrow::datatypes::UInt32Type>()
                    .clone(),
            ));
            Ok(())
        },
    )?;
    for r in &mut out.rejected[before..] {
        r.rows = body(&r.rows)?;
    }
    Ok(parts)
}

impl StreamOperator for RegularJoin {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.on_input_batch(LEFT, batch, out)
    }

    fn on_input_batch(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let changes = self.changes(input, batch, out)?;
        let mut touched = Touched::default();
        for change in changes {
            if let Change::Put(identity, entry) = change {
                self.apply(input, identity, entry, &mut touched);
            }
        }
        self.recompute(touched, out)
    }

    fn on_input_deletes(
        &mut self,
        input: usize,
        keys: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let ids = identities(&self.tables[input].identity, self.side(input), keys)?;
        let mut touched = Touched::default();
        for id in ids {
            self.remove(input, id, &mut touched);
        }
        self.recompute(touched, out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        self.on_input_watermarks(&[watermark, watermark], out)
    }

    fn on_input_watermarks(&mut self, watermarks: &[i64], out: &mut Output) -> Result<()> {
        for (mine, &w) in self.watermarks.iter_mut().zip(watermarks) {
            *mine = (*mine).max(w);
        }
        let mut touched = Touched::default();
        self.expire(&mut touched);
        self.recompute(touched, out)
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let parts = [self.side_state(LEFT)?, self.side_state(RIGHT)?];
        let batch = concat_batches(&self.state_schema(), &parts)?;
        Ok(OperatorState {
            meta: state_meta(&self.metrics, &self.watermarks),
            batch: Some(batch),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.tables = [Table::new(&self.plan.left)?, Table::new(&self.plan.right)?];
        self.emitted.clear();
        restore_meta(&state.meta, &mut self.metrics, &mut self.watermarks);
        if let Some(batch) = &state.batch {
            check_state_layout(batch, &self.state_schema())?;
            self.restore_side(batch, LEFT)?;
            self.restore_side(batch, RIGHT)?;
        }
        // What was emitted follows from the tables (see the invariant).
        let mut touched = Touched::default();
        for id in self.tables[LEFT].entries.keys() {
            touched.add(id.clone());
        }
        let metrics = self.metrics;
        self.recompute(touched, &mut Output::default())?;
        self.metrics = metrics;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        OperatorMetrics {
            open_windows: (self.tables[LEFT].live() + self.tables[RIGHT].live()) as u64,
            ..self.metrics
        }
    }
}
