//! One copy of a query's streams: the DAG of operators that one key group
//! runs (see [`crate::parallel`]). A [`crate::Pipeline`] owns the sources
//! (screening, watermark trackers) and hands every graph the same rows'
//! share and the same watermarks; a graph only feeds rows to streams and
//! moves their watermarks, in file order.
//!
//! Rows a stream emits go at once to the streams that read it, before any
//! watermark moves on; a watermark reaches a stream after its inputs have
//! emitted what that watermark completes. So a later stream sees its
//! input's rows exactly as if they came from a table with that watermark.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::catalog::{Catalog, SourceDef};
use crate::operator::{OperatorMetrics, OperatorState, Output, StreamOperator};
use crate::plan::{StreamKind, StreamPlan};
use crate::sql::EmitMode;
use crate::watermark::NO_WATERMARK;
use crate::{
    EngineError, OutputKind, RejectReason, Rejected, StreamOutput, aggregate, join, over, session,
    stateless, updating, window,
};

/// A running stream: its plan summary and operator.
pub struct RunningStream {
    pub name: String,
    /// Source tables or earlier streams it reads (several for UNION ALL).
    pub inputs: Vec<String>,
    /// Whether a later stream reads it. Its rows then feed that stream and
    /// reach an output only where one is bound to it by name.
    pub intermediate: bool,
    /// A GROUP BY without a window: its output is upserts and deletions by
    /// `key_columns`.
    pub updating: bool,
    pub emit: EmitMode,
    pub output_schema: SchemaRef,
    pub fingerprint: String,
    pub windowed: bool,
    pub window: Option<window::WindowSpec>,
    /// Output columns that identify a result row's group (the GROUP BY keys;
    /// the source's key columns a stateless stream passes through), e.g. for
    /// message keys.
    pub key_columns: Vec<String>,
    /// Output columns that identify one result row, if any (see
    /// [`plan::StreamPlan::row_key`]).
    pub row_key: Option<Vec<String>>,
    /// Output column holding a result row's event time (`window_end` of a
    /// windowed aggregate, the input's event time of a row-by-row stream);
    /// `None` where the rows have none: updating streams, EMIT CHANGES, and
    /// streams that do not project it.
    pub event_time: Option<String>,
    operator: Box<dyn StreamOperator>,
    /// The newest watermark of each input; the stream's own is their
    /// minimum, so a UNION ALL never runs ahead of its slowest input.
    input_watermarks: Vec<i64>,
}

impl RunningStream {
    /// This key group's counters; [`crate::Pipeline::stream_metrics`] has
    /// the stream's over all groups.
    pub(crate) fn metrics(&self) -> OperatorMetrics {
        self.operator.metrics()
    }

    /// The stream's watermark: the minimum of its inputs'.
    pub fn watermark(&self) -> i64 {
        self.input_watermarks
            .iter()
            .copied()
            .min()
            .unwrap_or(NO_WATERMARK)
    }
}

/// What a stream passes to the streams reading it.
#[derive(Clone, Copy)]
enum Change<'a> {
    Rows(&'a RecordBatch),
    /// Keys an updating stream deleted.
    Deletes(&'a RecordBatch),
}

fn collect(stream: usize, o: Output, out: &mut Vec<StreamOutput>) {
    let batches = o
        .deletes
        .into_iter()
        .map(|rows| (rows, OutputKind::Deletes))
        .chain(o.rows.into_iter().map(|rows| (rows, OutputKind::Rows)))
        .chain(o.late.into_iter().map(|rows| (rows, OutputKind::Late)));
    out.extend(
        batches
            .filter(|(rows, _)| rows.num_rows() > 0)
            .map(|(rows, kind)| StreamOutput { stream, rows, kind }),
    );
}

/// A key group's checkpoint: each stream's fingerprint, small state and
/// input watermarks (JSON by stream name), and bulk state by stream name.
pub(crate) type GroupState = (
    serde_json::Map<String, serde_json::Value>,
    BTreeMap<String, RecordBatch>,
);

/// The streams of one key group.
pub(crate) struct StreamGraph {
    streams: Vec<RunningStream>,
    /// Rows an expression failed on, not yet taken.
    rejected: Vec<Rejected>,
}

impl StreamGraph {
    /// Builds the operators of `plans`; `intermediate[i]` says whether a
    /// later stream reads stream `i`, `input_def` what a stream's first
    /// input is (a table of `catalog` or an earlier stream).
    pub(crate) fn build(
        plans: Vec<StreamPlan>,
        intermediate: &[bool],
        catalog: &Catalog,
        derived: &BTreeMap<String, SourceDef>,
    ) -> Result<Self, EngineError> {
        let mut streams = Vec::with_capacity(plans.len());
        for (p, &intermediate) in plans.into_iter().zip(intermediate) {
            let first = &p.inputs[0];
            let def = derived
                .get(&first.to_ascii_lowercase())
                .or_else(|| catalog.get(first))
                .expect("planner resolved the input");
            streams.push(running_stream(p, intermediate, def)?);
        }
        Ok(Self {
            streams,
            rejected: Vec::new(),
        })
    }

    pub(crate) fn streams(&self) -> &[RunningStream] {
        &self.streams
    }

    /// Each stream's counters, in stream order.
    pub(crate) fn metrics(&self) -> Vec<OperatorMetrics> {
        self.streams.iter().map(RunningStream::metrics).collect()
    }

    /// Rows of table `source`, then its watermark moved to `watermark`.
    pub(crate) fn push(
        &mut self,
        source: &str,
        rows: Option<&RecordBatch>,
        watermark: i64,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        if let Some(rows) = rows.filter(|r| r.num_rows() > 0) {
            self.feed(source, Change::Rows(rows), out)?;
        }
        self.advance(source, watermark, out)
    }

    pub(crate) fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// Hands a change of table or stream `input` (rows, or keys an
    /// updating stream deleted) to every stream that reads it, and what
    /// those emit to the streams that read them.
    fn feed(
        &mut self,
        input: &str,
        change: Change<'_>,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        for i in 0..self.streams.len() {
            for k in 0..self.streams[i].inputs.len() {
                if self.streams[i].inputs[k] != input {
                    continue;
                }
                let mut o = Output::default();
                let operator = &mut self.streams[i].operator;
                match change {
                    Change::Rows(rows) => operator.on_input_batch(k, rows, &mut o)?,
                    Change::Deletes(keys) => operator.on_input_deletes(k, keys, &mut o)?,
                }
                self.emit(i, o, Some(input), out)?;
            }
        }
        Ok(())
    }

    /// Passes a stream's output on: to the run loop, and to the streams
    /// that read it; rows its expressions failed on, to the dead letters
    /// (also those of rows emitted at a watermark, e.g. an OVER stream's
    /// SELECT list), as rows of `fed`, the input whose rows were just fed
    /// (a UNION's branch), or else of the stream's first input.
    fn emit(
        &mut self,
        stream: usize,
        mut o: Output,
        fed: Option<&str>,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        let s = &self.streams[stream];
        let source = fed.unwrap_or(&s.inputs[0]).to_string();
        self.rejected.extend(o.rejected.drain(..).map(|r| Rejected {
            source: source.clone(),
            stream: Some(s.name.clone()),
            reason: RejectReason::Evaluation,
            error: r.error,
            rows: r.rows,
        }));
        let (rows, deletes) = if self.streams[stream].intermediate {
            (o.rows.clone(), o.deletes.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        collect(stream, o, out);
        let name = self.streams[stream].name.clone();
        // An updating stream's changes, in the order they were made: the
        // deletions and upserts of one step are of different keys.
        for keys in deletes {
            self.feed(&name, Change::Deletes(&keys), out)?;
        }
        for rows in rows {
            self.feed(&name, Change::Rows(&rows), out)?;
        }
        Ok(())
    }

    /// Moves the watermark of table or stream `input` to `watermark`, and
    /// with it those of the streams that read it (each the minimum of its
    /// inputs'), each after its inputs have emitted what it completes.
    pub(crate) fn advance(
        &mut self,
        input: &str,
        watermark: i64,
        out: &mut Vec<StreamOutput>,
    ) -> Result<(), EngineError> {
        for i in 0..self.streams.len() {
            let s = &mut self.streams[i];
            let mut reads = false;
            for (name, wm) in s.inputs.iter().zip(s.input_watermarks.iter_mut()) {
                if name == input {
                    *wm = (*wm).max(watermark);
                    reads = true;
                }
            }
            if !reads {
                continue;
            }
            let own = s.watermark();
            let mut o = Output::default();
            s.operator
                .on_input_watermarks(&s.input_watermarks, &mut o)?;
            self.emit(i, o, None, out)?;
            if self.streams[i].intermediate {
                // What the stream emitted is complete up to here (an OVER
                // stream trails its input while rows wait for a step).
                let emitted = self.streams[i]
                    .operator
                    .output_watermark()
                    .map_or(own, |w| w.min(own));
                let name = self.streams[i].name.clone();
                self.advance(&name, emitted, out)?;
            }
        }
        Ok(())
    }

    /// Every stream's fingerprint, small state and input watermarks (as
    /// JSON by stream name), and its bulk state.
    pub(crate) fn snapshot(&mut self) -> Result<GroupState, EngineError> {
        let mut streams = serde_json::Map::new();
        let mut states = BTreeMap::new();
        for s in &mut self.streams {
            let st = s.operator.snapshot()?;
            streams.insert(
                s.name.clone(),
                serde_json::json!({
                    "fingerprint": s.fingerprint,
                    "operator": st.meta,
                    "input_watermarks": s.input_watermarks,
                }),
            );
            if let Some(b) = st.batch {
                states.insert(s.name.clone(), b);
            }
        }
        Ok((streams, states))
    }

    /// Fails if `saved` (a [`snapshot`](Self::snapshot)'s JSON) holds a
    /// stream this graph lacks or one whose query changed since.
    pub(crate) fn check_restorable(
        &self,
        saved: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), EngineError> {
        for name in saved.keys() {
            if !self.streams.iter().any(|s| &s.name == name) {
                return Err(EngineError::IncompatibleState(format!(
                    "the checkpoint holds state of stream `{name}`, which the query no longer defines"
                )));
            }
        }
        for s in &self.streams {
            if let Some(st) = saved.get(&s.name)
                && st["fingerprint"].as_str() != Some(s.fingerprint.as_str())
            {
                return Err(EngineError::IncompatibleState(format!(
                    "stream `{}` changed since the checkpoint was taken (fingerprint {} → {})",
                    s.name,
                    st["fingerprint"].as_str().unwrap_or("?"),
                    s.fingerprint
                )));
            }
        }
        Ok(())
    }

    /// Restores what [`snapshot`](Self::snapshot) wrote (checked by
    /// [`check_restorable`](Self::check_restorable)).
    pub(crate) fn restore(
        &mut self,
        saved: &serde_json::Map<String, serde_json::Value>,
        mut states: BTreeMap<String, RecordBatch>,
    ) -> Result<(), EngineError> {
        for s in &mut self.streams {
            if let Some(st) = saved.get(&s.name) {
                s.operator.restore(OperatorState {
                    meta: st["operator"].clone(),
                    batch: states.remove(&s.name),
                })?;
                // Checkpoints before UNION ALL lack these; a stream with one
                // input gets its watermark from the source's on the next step.
                if let Some(marks) = st["input_watermarks"].as_array()
                    && marks.len() == s.input_watermarks.len()
                {
                    for (wm, saved) in s.input_watermarks.iter_mut().zip(marks) {
                        *wm = saved.as_i64().unwrap_or(NO_WATERMARK);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The operator of a planned stream, with its summary.
fn running_stream(
    p: StreamPlan,
    intermediate: bool,
    input: &SourceDef,
) -> Result<RunningStream, EngineError> {
    let updating = p.kind.is_updating();
    let (operator, windowed, window): (Box<dyn StreamOperator>, bool, _) = match p.kind {
        StreamKind::Updating(u) => (
            Box::new(updating::UpdatingAggregate::new(
                *u,
                Arc::clone(&p.output_schema),
            )?),
            false,
            None,
        ),
        StreamKind::Stateless(s) => (
            Box::new(stateless::FilterProject::new(
                s,
                Arc::clone(&p.output_schema),
            )),
            false,
            None,
        ),
        StreamKind::Join(j) => (
            join::new_operator(*j, Arc::clone(&p.output_schema))?,
            false,
            None,
        ),
        StreamKind::Over(o) => (
            Box::new(over::OverOperator::new(
                *o,
                &input.schema,
                Arc::clone(&p.output_schema),
            )?),
            false,
            None,
        ),
        StreamKind::Windowed(w) => {
            let spec = w.window;
            let op: Box<dyn StreamOperator> = match spec {
                window::WindowSpec::Session { .. } => Box::new(session::SessionAggregate::new(
                    w,
                    Arc::clone(&p.output_schema),
                    p.emit,
                )?),
                _ => Box::new(aggregate::WindowAggregate::new(
                    w,
                    Arc::clone(&p.output_schema),
                    p.emit,
                )),
            };
            (op, true, Some(spec))
        }
    };
    Ok(RunningStream {
        name: p.name,
        input_watermarks: vec![NO_WATERMARK; p.inputs.len()],
        inputs: p.inputs,
        intermediate,
        updating,
        emit: p.emit,
        output_schema: p.output_schema,
        fingerprint: p.fingerprint,
        windowed,
        window,
        key_columns: p.key_columns,
        row_key: p.row_key,
        event_time: p
            .as_input
            .as_ref()
            .ok()
            .filter(|d| !d.changelog)
            .map(|d| d.event_time.clone()),
        operator,
    })
}
