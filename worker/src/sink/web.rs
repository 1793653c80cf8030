//! The web view's tap on a run's output: a [`Sink`] wrapped so that every
//! result row it is given is also offered to the [`WebView`].
//!
//! It wraps a sink instead of being one of its own on purpose: a run
//! checkpoints a position per sink and refuses a checkpoint that lacks one
//! (`Runner::check_layout`), so an extra sink would make turning the view
//! on or off a reason to refuse a restart. The wrapper keeps the inner
//! sink's name, positions and commits unchanged, and adds only an `Arc`
//! clone per batch (see `runtime::web`). Rows are shown as they are
//! emitted, before their epoch commits; after a failover, rows of the
//! replayed epoch may show twice (a chart redraws the same bar).

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use crate::checkpoint::partitioned::StateRecord;
use crate::runner::{
    CommitDelays, ConnectorError, DeadLetter, Positions, RestoredSink, RowKind, Sink,
    SinkCheckpoint,
};
use crate::runtime::web::WebView;

/// `inner`, with its results teed to a web view.
pub struct WebTee {
    inner: Box<dyn Sink>,
    web: WebView,
}

impl WebTee {
    pub fn new(inner: Box<dyn Sink>, web: WebView) -> Self {
        Self { inner, web }
    }

    /// The first sink of `sinks` wrapped (nothing to do without a view or sinks).
    pub fn wrap_first(sinks: &mut Vec<Box<dyn Sink>>, web: Option<&WebView>) {
        if let Some(web) = web
            && !sinks.is_empty()
        {
            let first = sinks.remove(0);
            sinks.insert(0, Box::new(Self::new(first, web.clone())));
        }
    }
}

impl Sink for WebTee {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn start(
        &mut self,
        restored: Option<RestoredSink<'_>>,
        positions: &Positions,
    ) -> Result<bool, ConnectorError> {
        self.inner.start(restored, positions)
    }

    fn write(
        &mut self,
        stream: &str,
        kind: RowKind,
        rows: &RecordBatch,
    ) -> Result<(), ConnectorError> {
        if kind == RowKind::Results {
            self.web.offer(stream, rows);
        }
        self.inner.write(stream, kind, rows)
    }

    fn dead_letters(&mut self, bad: &[DeadLetter]) -> Result<(), ConnectorError> {
        self.inner.dead_letters(bad)
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<SinkCheckpoint, ConnectorError> {
        self.inner.pre_commit(epoch)
    }

    fn commit(&mut self, epoch: u64, positions: &Positions) -> Result<(), ConnectorError> {
        self.inner.commit(epoch, positions)
    }

    fn stage_state(&mut self, records: &[StateRecord]) -> Result<bool, ConnectorError> {
        self.inner.stage_state(records)
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.inner.close()
    }

    fn records_out(&self) -> BTreeMap<String, u64> {
        self.inner.records_out()
    }

    fn commit_delays(&self) -> Option<CommitDelays> {
        self.inner.commit_delays()
    }

    fn pending_bytes(&self) -> u64 {
        self.inner.pending_bytes()
    }
}
