//! Running aggregates: `SUM`/`COUNT`/`AVG`/`MIN`/`MAX(x) OVER (PARTITION BY
//! … ORDER BY ts)` over a frame from `UNBOUNDED PRECEDING` to the current
//! row (a running position, a cumulative volume, the day's low so far).
//!
//! Such a frame grows without end, so its rows are not kept. Each row's
//! value folds its argument into the running state of the row before it in
//! its partition: the partition's last emitted row, which the operator
//! keeps in its buffer together with that state (its [`Carry`]: the fold so
//! far and the number of non-null values folded). State is one row per
//! partition, whatever the partition's length.
//!
//! With the `RANGE` frame (the default with `ORDER BY`) rows of equal event
//! time are peers and all get the value after the last of them, as a batch
//! engine gives; with `ROWS` each row gets the value up to itself.
//!
//! Invariant: every emitted row in the buffer carries the running state
//! after it; rows not emitted yet carry none.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Float64Array, Int64Array, PrimitiveArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use super::{RowsFunction, conform_to};

/// One running aggregate of an OVER stream.
#[derive(Clone, Debug)]
pub struct RunningAggregate {
    pub(super) function: RowsFunction,
    pub(super) argument: Arc<dyn PhysicalExpr>,
    /// `RANGE` frame: rows of equal event time share the last one's value.
    peers: bool,
    /// The argument's type (Float64 or Int64): the type of the carried fold.
    argument_type: DataType,
    output: DataType,
}

/// The running state after each of a run of rows: the fold of the
/// non-null values (`acc`, in the argument's type, null before the first)
/// and how many there were.
#[derive(Clone, Debug)]
pub struct Carry {
    pub acc: ArrayRef,
    pub n: Int64Array,
}

impl Carry {
    /// No state for `rows` rows.
    pub fn nulls(data_type: &DataType, rows: usize) -> Self {
        Self {
            acc: arrow::array::new_null_array(data_type, rows),
            n: Int64Array::new_null(rows),
        }
    }

    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        Ok(Self {
            acc: arrow::compute::take(self.acc.as_ref(), indices, None)?,
            n: arrow::compute::take(&self.n, indices, None)?
                .as_primitive::<Int64Type>()
                .clone(),
        })
    }

    pub fn concat(parts: &[&Carry]) -> Result<Self> {
        let accs: Vec<&dyn Array> = parts.iter().map(|c| c.acc.as_ref()).collect();
        let ns: Vec<&dyn Array> = parts.iter().map(|c| &c.n as &dyn Array).collect();
        Ok(Self {
            acc: arrow::compute::concat(&accs)?,
            n: arrow::compute::concat(&ns)?
                .as_primitive::<Int64Type>()
                .clone(),
        })
    }

    /// `self` with the rows at `positions` replaced by `update`'s rows, in
    /// order.
    pub fn with_updates(&self, positions: &[u32], update: &Carry) -> Result<Self> {
        let mut source: Vec<(usize, usize)> = (0..self.n.len()).map(|i| (0, i)).collect();
        for (k, &p) in positions.iter().enumerate() {
            source[p as usize] = (1, k);
        }
        Ok(Self {
            acc: arrow::compute::interleave(&[self.acc.as_ref(), update.acc.as_ref()], &source)?,
            n: arrow::compute::interleave(&[&self.n as &dyn Array, &update.n], &source)?
                .as_primitive::<Int64Type>()
                .clone(),
        })
    }
}

/// Where a step's emitted rows are and what precedes them: positions are
/// into the step's rows sorted by (partition, event time, arrival).
pub struct StepRows<'a> {
    /// The emitted rows' sorted positions, partition by partition.
    pub rows: &'a [u32],
    /// Per emitted row, its partition's first sorted position.
    pub starts: &'a [u32],
    /// Per emitted row, the sorted position of its last peer (equal event
    /// time); only read by `RANGE` aggregates.
    pub peer_ends: &'a [u32],
    /// The carry of every sorted position (null where none).
    pub prior: &'a Carry,
}

impl RunningAggregate {
    /// `None` for argument or result types the running form does not cover.
    pub fn new(
        function: RowsFunction,
        argument: Arc<dyn PhysicalExpr>,
        argument_type: DataType,
        peers: bool,
        output: DataType,
    ) -> Option<Self> {
        let numeric = matches!(argument_type, DataType::Float64 | DataType::Int64);
        let expected = match function {
            RowsFunction::Count => matches!(output, DataType::Int64),
            RowsFunction::Avg => matches!(output, DataType::Float64),
            _ => output == argument_type,
        };
        (numeric && expected).then_some(Self {
            function,
            argument,
            peers,
            argument_type,
            output,
        })
    }

    /// Whether rows of equal event time share a value (`RANGE` frame).
    pub fn peers(&self) -> bool {
        self.peers
    }

    pub fn argument_type(&self) -> &DataType {
        &self.argument_type
    }

    /// The values of the emitted rows and the carry after each.
    /// `values` is the argument at every sorted position.
    pub fn evaluate(&self, values: &ArrayRef, step: &StepRows<'_>) -> Result<(ArrayRef, Carry)> {
        match values.data_type() {
            DataType::Float64 => self.run::<Float64Type>(values, step, |a, b| a + b),
            DataType::Int64 => self.run::<Int64Type>(values, step, i64::wrapping_add),
            other => Err(DataFusionError::Internal(format!(
                "running OVER aggregate planned for {other}"
            ))),
        }
    }

    fn run<T>(
        &self,
        values: &ArrayRef,
        step: &StepRows<'_>,
        add: fn(T::Native, T::Native) -> T::Native,
    ) -> Result<(ArrayRef, Carry)>
    where
        T: ArrowPrimitiveType,
        T::Native: PartialOrd,
    {
        let values = values.as_primitive::<T>();
        let prior_acc = step.prior.acc.as_primitive::<T>();
        let fold = |state: State<T::Native>, at: usize| -> State<T::Native> {
            if values.is_null(at) {
                return state;
            }
            let v = values.value(at);
            let acc = match (state.acc, self.function) {
                (None, _) => v,
                (Some(a), RowsFunction::Min) => pick(a, v, |x, y| y < x),
                (Some(a), RowsFunction::Max) => pick(a, v, |x, y| y > x),
                (Some(a), _) => add(a, v),
            };
            State {
                acc: Some(acc),
                n: state.n + 1,
            }
        };
        let rows = step.rows;
        let mut carried: Vec<State<T::Native>> = Vec::with_capacity(rows.len());
        let mut shown: Vec<State<T::Native>> = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            let (r, start) = (r as usize, step.starts[i] as usize);
            let continues = i > 0 && rows[i - 1] as usize + 1 == r && r > start;
            let before = match continues {
                true => carried[i - 1],
                // The row before is the partition's last emitted row, kept
                // with its carry (none at the partition's start).
                false if r > start && step.prior.n.is_valid(r - 1) => State {
                    acc: prior_acc.is_valid(r - 1).then(|| prior_acc.value(r - 1)),
                    n: step.prior.n.value(r - 1),
                },
                false => State::default(),
            };
            let after = fold(before, r);
            carried.push(after);
            let peer_end = if self.peers {
                step.peer_ends[i] as usize
            } else {
                r
            };
            let value = match shown.last() {
                // Peers share the value after the last of them.
                Some(_)
                    if peer_end > r && continues && step.peer_ends[i - 1] as usize == peer_end =>
                {
                    shown[i - 1]
                }
                _ => (r + 1..=peer_end).fold(after, fold),
            };
            shown.push(value);
        }
        let output = self.output_values::<T>(&shown)?;
        let carry = Carry {
            acc: Arc::new(carried.iter().map(|s| s.acc).collect::<PrimitiveArray<T>>()),
            n: carried.iter().map(|s| Some(s.n)).collect(),
        };
        Ok((output, carry))
    }

    fn output_values<T>(&self, states: &[State<T::Native>]) -> Result<ArrayRef>
    where
        T: ArrowPrimitiveType,
    {
        let array: ArrayRef = match self.function {
            RowsFunction::Count => {
                Arc::new(states.iter().map(|s| Some(s.n)).collect::<Int64Array>())
            }
            RowsFunction::Avg => {
                let sums = states.iter().map(|s| s.acc).collect::<PrimitiveArray<T>>();
                let sums = arrow::compute::cast(&sums, &DataType::Float64)?;
                let sums = sums.as_primitive::<Float64Type>();
                Arc::new(
                    states
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.n > 0).then(|| sums.value(i) / s.n as f64))
                        .collect::<Float64Array>(),
                )
            }
            _ => Arc::new(states.iter().map(|s| s.acc).collect::<PrimitiveArray<T>>()),
        };
        conform_to(array, &self.output)
    }
}

/// The running state after a row.
#[derive(Clone, Copy, Debug)]
struct State<T> {
    acc: Option<T>,
    n: i64,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self { acc: None, n: 0 }
    }
}

/// `b` where `better(a, b)`, else `a` (MIN and MAX keep the first of equals).
fn pick<T: Copy>(a: T, b: T, better: impl Fn(T, T) -> bool) -> T {
    if better(a, b) { b } else { a }
}
