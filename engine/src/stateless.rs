//! Stateless streams: `SELECT … FROM source WHERE …` (also through
//! subqueries and CTEs) and UNION ALL of such SELECTs, row by row.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result;

use super::operator::{OperatorMetrics, OperatorState, Output, StreamOperator, evaluate_rows};
use super::plan::{StatelessPlan, apply_steps};

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
        let (steps, schema) = (&self.plan.branches[input], &self.output_schema);
        let eval = |batch: &RecordBatch| -> Result<Option<RecordBatch>> {
            let rows = apply_steps(steps, batch, schema)?;
            Ok((rows.num_rows() > 0).then_some(rows))
        };
        let metrics = &mut self.metrics;
        let mut apply = |_: &RecordBatch, rows: Option<RecordBatch>, out: &mut Output| {
            if let Some(rows) = rows {
                metrics.rows_out += rows.num_rows() as u64;
                out.rows.push(rows);
            }
            Ok(())
        };
        let rejected_before = out.rejected.len();
        evaluate_rows(batch, out, &eval, &mut apply)?;
        self.metrics.rejected_rows += (out.rejected.len() - rejected_before) as u64;
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
