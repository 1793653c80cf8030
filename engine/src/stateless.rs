//! Stateless streams: `SELECT … FROM source WHERE …` (also through
//! subqueries and CTEs) and UNION ALL of such SELECTs, row by row.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result;

use super::operator::{OperatorMetrics, OperatorState, Output, StreamOperator, emit_through_steps};
use super::plan::StatelessPlan;

pub struct FilterProject {
    plan: StatelessPlan,
    output_schema: SchemaRef,
    metrics: OperatorMetrics,
}

impl FilterProject {
    pub fn new(plan: StatelessPlan, output_schema: SchemaRef) -> Self {
        Self {
            plan,
            output_schema,
            metrics: OperatorMetrics::default(),
        }
    }
}

impl StreamOperator for FilterProject {
    fn on_batch(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        self.on_input_batch(0, batch, out)
    }

    fn on_input_batch(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let steps = &self.plan.branches[input];
        emit_through_steps(steps, &self.output_schema, batch, out, &mut self.metrics)
    }

    fn on_watermark(&mut self, _watermark: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        Ok(OperatorState {
            meta: serde_json::json!({ "metrics": self.metrics }),
            batch: None,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if let Ok(m) = serde_json::from_value(state.meta["metrics"].clone()) {
            self.metrics = m;
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}
