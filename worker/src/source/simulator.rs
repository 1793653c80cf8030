//! The market simulator as a source (the demo's): generates the events that
//! are due by the wall clock (times a speed-up) and feeds the three market
//! tables.
//!
//! The simulator is deterministic for a seed and independent of how its
//! output is batched, so its position is just the number of ticks generated:
//! a restore regenerates that many and drops them, and the run continues
//! with exactly the events an uninterrupted run would have produced next.

use std::time::{Duration, Instant};

use crate::engine::SourceTable;
use crate::runner::{ConnectorError, Polled, Source, SourceFigures, TableBatch};
use crate::simulator::{SimConfig, Simulator};

/// Ticks generated per step while fast-forwarding to a checkpoint.
const FAST_FORWARD_STEP: u64 = 65_536;
/// Most ticks generated in one batch.
const MAX_BATCH_TICKS: f64 = 8192.0;

pub struct SimulatorSource {
    config: SimConfig,
    sim: Simulator,
    /// Event time per wall-clock time.
    speed: f64,
    /// Wall clock and event time the pacing counts from.
    anchor: Option<(Instant, i64)>,
    events: u64,
}

impl SimulatorSource {
    pub fn new(config: SimConfig, speed: f64) -> anyhow::Result<Self> {
        Ok(Self {
            sim: Simulator::try_new(config.clone())?,
            config,
            speed,
            anchor: None,
            events: 0,
        })
    }
}

impl Source for SimulatorSource {
    fn name(&self) -> &str {
        "simulator"
    }

    fn start(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectorError> {
        if let Some(p) = position {
            let seed = p["seed"].as_u64();
            if seed != Some(self.config.seed) {
                return Err(ConnectorError::fatal(anyhow::anyhow!(
                    "the checkpoint was taken with simulator seed {seed:?}, this run uses {}; \
                     use the same --seed or another --checkpoint-dir",
                    self.config.seed
                )));
            }
            let ticks = p["ticks"].as_u64().unwrap_or(0);
            while self.sim.ticks_generated() < ticks {
                let n = (ticks - self.sim.ticks_generated()).min(FAST_FORWARD_STEP);
                self.sim.next_batch(n as usize);
            }
            tracing::info!(
                ticks,
                "simulator fast-forwarded to the checkpoint's position"
            );
        }
        self.anchor = Some((Instant::now(), self.sim.event_time_ms()));
        Ok(())
    }

    fn partitions(&self) -> Vec<(String, usize)> {
        SourceTable::ALL
            .iter()
            .map(|t| (t.table_name().to_string(), 1))
            .collect()
    }

    fn poll(&mut self, _max_records: usize, _max_wait: Duration) -> Result<Polled, ConnectorError> {
        let (wall, event) = *self
            .anchor
            .get_or_insert((Instant::now(), self.sim.event_time_ms()));
        let due = event + (wall.elapsed().as_secs_f64() * self.speed * 1000.0) as i64;
        let mut polled = Polled::default();
        while self.sim.event_time_ms() < due {
            let n = ((due - self.sim.event_time_ms()) as f64 / 1000.0
                * self.config.ticks_per_second)
                .clamp(1.0, MAX_BATCH_TICKS);
            let generated = self.sim.next_batch(n as usize);
            for (table, rows) in SourceTable::ALL.iter().zip(generated.to_batches()) {
                polled.records += rows.num_rows();
                polled.batches.push(TableBatch {
                    table: table.table_name().to_string(),
                    partition: 0,
                    rows,
                });
            }
        }
        self.events += polled.records as u64;
        Ok(polled)
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "ticks": self.sim.ticks_generated(), "seed": self.config.seed })
    }

    fn is_done(&self) -> bool {
        false
    }

    fn figures(&self) -> SourceFigures {
        SourceFigures {
            records_in: [("simulator".to_string(), self.events)].into(),
            ..SourceFigures::default()
        }
    }
}
