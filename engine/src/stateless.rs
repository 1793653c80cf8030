//! Stateless streams: `SELECT … FROM source WHERE …`, row by row.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result;

use super::operator::{
    OperatorMetrics, OperatorState, Output, StreamOperator, apply_filter, conform, evaluate,
};
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
        self.metrics.rows_in += batch.num_rows() as u64;
        let batch = apply_filter(self.plan.filter.as_ref(), batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let columns = self
            .plan
            .projection
            .iter()
            .map(|e| evaluate(e, &batch))
            .collect::<Result<Vec<_>>>()?;
        let columns = conform(&self.output_schema, columns)?;
        let rows = RecordBatch::try_new(self.output_schema.clone(), columns)?;
        self.metrics.rows_out += rows.num_rows() as u64;
        out.rows.push(rows);
        Ok(())
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
