//! Whether a query's state splits by key, and by which column of each
//! source (pure: reads plans only).
//!
//! A query splits when every stateful stream keeps each key's rows
//! together: a windowed aggregate or a session grouped by the source's key
//! column, an updating aggregate grouped by it, an OVER window partitioned
//! by it. The key is followed through each stream by plain column
//! references (projections, UNION ALL branches, GROUP BY, PARTITION BY); a
//! stream whose output no longer carries it splits only if nothing
//! stateful reads that output. Everything else (global aggregates, window
//! top-N across keys, joins) runs in one key group, with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;

use crate::catalog::SourceDef;
use crate::plan::{GroupSlot, PlannedSql, RowStep, StreamKind, WindowedPlan};

/// How a query's rows are split into key groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// By the value of one column of each source table (its index in the
    /// table's schema, by table name as the streams read it).
    ByKey(BTreeMap<String, usize>),
    /// One key group; why the query cannot be split.
    Whole(String),
}

impl Partitioning {
    /// Why splitting the query's rows by source partition (instead of by a
    /// hash of the key) would not keep each key's rows together, if it
    /// would not: the query does not split by key, or a source table is
    /// keyed (in Kafka, by its declared key columns) by something other
    /// than the column the query splits it by. `tables` are the source
    /// tables the query reads.
    pub fn refuses_split_by_partition<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a SourceDef>,
    ) -> Option<String> {
        let columns = match self {
            Self::ByKey(columns) => columns,
            Self::Whole(why) => return Some(format!("the query does not split by key ({why})")),
        };
        tables.into_iter().find_map(|def| {
            let column = columns
                .get(&def.name)
                .or_else(|| columns.get(&def.name.to_ascii_lowercase()))
                .map(|&i| def.schema.field(i).name().clone());
            match column {
                Some(c) if def.key_columns == [c.clone()] => None,
                _ => Some(format!(
                    "table `{}` is keyed by ({}), but the query splits it by {}: its \
                     partitions do not each hold whole keys of the query",
                    def.name,
                    def.key_columns.join(", "),
                    column.map_or_else(|| "no column".into(), |c| format!("`{c}`"))
                )),
            }
        })
    }
}

/// Decides how `planned` splits.
pub fn partitioning(planned: &PlannedSql) -> Partitioning {
    match key_columns(planned) {
        Ok(columns) => Partitioning::ByKey(columns),
        Err(reason) => Partitioning::Whole(reason),
    }
}

fn key_columns(planned: &PlannedSql) -> Result<BTreeMap<String, usize>, String> {
    // Column carrying the key, per table or stream (lower-case name).
    let mut key_of: BTreeMap<String, Option<usize>> = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for table in planned.tables_read() {
        let def = planned
            .catalog
            .get(table)
            .expect("the planner resolved every table");
        let Some(key) = def.key_columns.first() else {
            return Err(format!("table `{}` declares no key column", def.name));
        };
        let index = def
            .schema
            .index_of(key)
            .map_err(|_| format!("the key column `{key}` of `{}` is not a column", def.name))?;
        if !hashable(def.schema.field(index).data_type()) {
            return Err(format!(
                "the key column `{key}` of `{}` is of type {}, which is not split by value",
                def.name,
                def.schema.field(index).data_type()
            ));
        }
        key_of.insert(table.to_ascii_lowercase(), Some(index));
        sources.insert(table.to_string(), index);
    }
    for stream in &planned.streams {
        let inputs: Vec<Option<usize>> = stream
            .inputs
            .iter()
            .map(|i| key_of.get(&i.to_ascii_lowercase()).copied().flatten())
            .collect();
        let keyed_input = || {
            inputs[0].ok_or_else(|| {
                format!(
                    "stream `{}` keeps state over `{}`, whose rows no longer carry the key column",
                    stream.name, stream.inputs[0]
                )
            })
        };
        let not_by_key = |what: &str| {
            format!(
                "stream `{}` {what} that do not include the source's key column",
                stream.name
            )
        };
        let output = match &stream.kind {
            StreamKind::Stateless(s) => {
                let through: Vec<Option<usize>> = s
                    .branches
                    .iter()
                    .zip(&inputs)
                    .map(|(steps, key)| key.and_then(|k| through_steps(steps, k)))
                    .collect();
                match through.first() {
                    Some(&first) if through.iter().all(|&k| k == first) => first,
                    _ => None,
                }
            }
            StreamKind::Windowed(w) => {
                let key = keyed_input()?;
                let Some(i) = w.keys.iter().position(|e| is_column(e, key)) else {
                    return Err(not_by_key("groups by expressions"));
                };
                if w.rank.is_some() {
                    return Err(format!(
                        "stream `{}` ranks a window's rows across keys (top-N)",
                        stream.name
                    ));
                }
                w.group_layout
                    .iter()
                    .position(|&g| g == GroupSlot::Key(i))
                    .and_then(|g| w.projection.iter().position(|e| is_column(e, g)))
            }
            StreamKind::Updating(u) => {
                let key = keyed_input()?;
                let Some(i) = u.keys.iter().position(|e| is_column(e, key)) else {
                    return Err(if u.keys.is_empty() {
                        format!("stream `{}` is a global aggregate", stream.name)
                    } else {
                        not_by_key("groups by expressions")
                    });
                };
                u.output_keys.get(i).copied()
            }
            StreamKind::Over(o) => {
                let key = keyed_input()?;
                if !o.partition_by.iter().any(|e| is_column(e, key)) {
                    return Err(not_by_key("has OVER windows partitioned by expressions"));
                }
                // Window-function values follow the input's columns.
                through_steps(&o.post, key)
            }
            StreamKind::Join(_) => {
                return Err(format!(
                    "stream `{}` is a join (joins run in one key group for now)",
                    stream.name
                ));
            }
        };
        key_of.insert(stream.name.to_ascii_lowercase(), output);
    }
    Ok(sources)
}

/// Which columns of each source table (by lower-case name) the streams
/// reading it evaluate. A key group's share of a batch copies
/// only these ([`super::project`]); every other column of it holds
/// placeholder values no stream looks at. Exact for windowed aggregates
/// and stateless streams, which evaluate source rows as they arrive and
/// keep none; a table read by any other kind of stream (an OVER window or
/// an updating aggregate, which keep source rows or evaluate them later)
/// has all its columns read.
pub fn columns_read(planned: &PlannedSql) -> BTreeMap<String, Vec<bool>> {
    let mut read: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for stream in &planned.streams {
        for (branch, input) in stream.inputs.iter().enumerate() {
            let Some(def) = planned.catalog.get(input) else {
                continue;
            };
            if planned
                .streams
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(input))
            {
                continue; // an earlier stream, not a table
            }
            let width = def.schema.fields().len();
            let columns = read
                .entry(input.to_ascii_lowercase())
                .or_insert_with(|| vec![false; width]);
            let used = match &stream.kind {
                StreamKind::Windowed(w) => Some(windowed_inputs(w)),
                StreamKind::Stateless(s) => s.branches.get(branch).and_then(|b| steps_inputs(b)),
                _ => None,
            };
            match used {
                Some(used) => used
                    .into_iter()
                    .filter(|&c| c < width)
                    .for_each(|c| columns[c] = true),
                None => columns.iter_mut().for_each(|c| *c = true),
            }
        }
    }
    read
}

/// The source columns a windowed aggregate evaluates on its input rows.
fn windowed_inputs(w: &WindowedPlan) -> Vec<usize> {
    let exprs = w.filter.iter().chain(&w.keys).chain(
        w.aggregates
            .iter()
            .flat_map(|a| a.inputs.iter().chain(&a.filter)),
    );
    let mut used = vec![w.event_time_index];
    used.extend(exprs.flat_map(columns_of));
    used
}

/// The input columns a list of row steps reads: those of the filters
/// before the first projection and of that projection; `None` (all) when
/// no step projects, since the input's columns are then the output's.
fn steps_inputs(steps: &[RowStep]) -> Option<Vec<usize>> {
    let mut used = Vec::new();
    for step in steps {
        match step {
            RowStep::Filter(e) => used.extend(columns_of(e)),
            RowStep::Project(exprs) => {
                used.extend(exprs.iter().flat_map(columns_of));
                return Some(used);
            }
        }
    }
    None
}

/// The input columns `e` refers to.
fn columns_of(e: &Arc<dyn PhysicalExpr>) -> impl Iterator<Item = usize> + use<> {
    collect_columns(e).into_iter().map(|c| c.index())
}

/// Whether `e` is a plain reference to column `index` of its input.
fn is_column(e: &Arc<dyn PhysicalExpr>, index: usize) -> bool {
    e.downcast_ref::<Column>()
        .is_some_and(|c| c.index() == index)
}

/// Where column `index` of a step list's input ends up in its output, if
/// it passes through unchanged.
fn through_steps(steps: &[RowStep], mut index: usize) -> Option<usize> {
    for step in steps {
        if let RowStep::Project(exprs) = step {
            index = exprs.iter().position(|e| is_column(e, index))?;
        }
    }
    Some(index)
}

/// Types whose values [`super::route`] hashes the same in every process
/// and release.
pub fn hashable(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}
