//! `tickflow-worker demo`: the whole pipeline in one process, no broker.
//!
//! Wiring around the run loop: the simulator produces market data in real
//! time (times `speed`) as a [`SimulatorSource`], every query of `sql/` runs
//! over it, results go to a [`MemoryOutputs`] sink, and an observer shows
//! them live (a ratatui dashboard on a terminal, plain periodic tables
//! otherwise). Checkpoints go to `--checkpoint-dir`; run again with the same
//! directory (and seed) and the demo resumes where it stopped. With `--web`,
//! the results also go to the live web view (`runtime::web`), served with
//! `/status` and `/metrics` on that address.

mod plain;
mod tui;
mod tui_keys;
mod view;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::checkpoint::CheckpointStore;
use crate::engine::{Catalog, EngineConfig, Pipeline};
use crate::queries::builtin_sql;
use crate::runner::{Observer, Progress, RunError, RunOptions, RunView, Runner, Sink};
use crate::runtime::StatusHandle;
use crate::runtime::web::{WebView, page_url};
use crate::simulator::SimConfig;
use crate::sink::memory::MemoryOutputs;
use crate::sink::web::WebTee;
use crate::source::simulator::SimulatorSource;

pub use view::DemoState;

/// Rows kept per stream for the views.
const ROWS_KEPT: usize = 4096;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub sim: SimConfig,
    /// Event-time speed-up over the wall clock.
    pub speed: f64,
    pub duration: Option<Duration>,
    /// Force plain output even on a terminal.
    pub plain: bool,
    /// Plain-mode print interval.
    pub refresh: Duration,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub allowed_lateness: Duration,
    /// Serve the live web view (and `/status`, `/metrics`) here.
    pub web: Option<SocketAddr>,
    pub stop: Arc<AtomicBool>,
}

/// Runs the demo until `duration`, `q` or Ctrl-C.
pub fn run_demo(opts: DemoOptions) -> Result<(), RunError> {
    let config = crate::app::Parallelism::default().apply(EngineConfig {
        allowed_lateness: opts.allowed_lateness,
        idle_timeout: None,
        ..EngineConfig::default()
    });
    let pipeline = Pipeline::new(&builtin_sql(), &Catalog::builtin(), &config)?;
    let source = SimulatorSource::new(opts.sim.clone(), opts.speed).map_err(RunError::Setup)?;
    let results = MemoryOutputs::new(ROWS_KEPT);
    let store = match &opts.checkpoint_dir {
        Some(dir) => Some(CheckpointStore::open(dir, 3)?),
        None => None,
    };
    let status = StatusHandle::new("demo");
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(results.clone())];
    if let Some(addr) = opts.web {
        let web = serve_web(addr, &status, &pipeline).map_err(RunError::Setup)?;
        WebTee::wrap_first(&mut sinks, Some(&web));
    }
    let mut run_opts = RunOptions::new(Arc::clone(&opts.stop), status);
    run_opts.checkpoint_interval = opts.checkpoint_interval;
    let mut runner = Runner::new(pipeline, vec![Box::new(source)], sinks, store, run_opts);
    let tui = !opts.plain && std::io::stdout().is_terminal();
    let mut view = LiveView {
        screen: if tui {
            Screen::Tui(tui::Tui::start().map_err(RunError::Observer)?)
        } else {
            Screen::Plain
        },
        results: results.clone(),
        started: Instant::now(),
        duration: opts.duration,
        refresh: opts.refresh,
        last_print: Instant::now(),
        rate: (Instant::now(), 0, 0.0),
        checkpoints: 0,
    };
    let run = runner.run(&mut Progress::default(), Some(&mut view));
    if let Screen::Tui(t) = view.screen {
        t.stop();
    }
    let summary = run?;
    if let Some(id) = summary.restored_from {
        tracing::info!(id, "this run resumed from checkpoint {id}");
    }
    results.with(|results| {
        plain::print_plain(&DemoState {
            pipeline: runner.pipeline(),
            results,
            started: view.started,
            events_in: summary.records_in,
            last_checkpoint: None,
            checkpoints: summary.checkpoints_written,
            rate: view.rate.2,
            dead_letters: summary.bad_records,
        })
    });
    Ok(())
}

/// Starts the web view of `pipeline` on `addr` and prints its address
/// (before the terminal dashboard takes the screen; again in the log).
fn serve_web(
    addr: SocketAddr,
    status: &StatusHandle,
    pipeline: &Pipeline,
) -> anyhow::Result<WebView> {
    let web = WebView::start("demo", status.clone())?;
    web.configure(pipeline.streams());
    let bound = crate::runtime::http::serve_with(addr, status.clone(), Some(web.clone()))?;
    let url = page_url(bound);
    println!("web view: {url}");
    tracing::info!(%url, "web view listening");
    Ok(web)
}

enum Screen {
    Plain,
    Tui(tui::Tui),
}

/// The observer that draws the views and paces the run (100 ms steps).
struct LiveView {
    screen: Screen,
    results: MemoryOutputs,
    started: Instant,
    duration: Option<Duration>,
    refresh: Duration,
    last_print: Instant,
    /// Since when, events then, events per second over the last second.
    rate: (Instant, u64, f64),
    checkpoints: u64,
}

const STEP: Duration = Duration::from_millis(100);

impl Observer for LiveView {
    fn after_step(&mut self, run: &RunView<'_>) -> anyhow::Result<bool> {
        if self.duration.is_some_and(|d| self.started.elapsed() >= d) {
            return Ok(true);
        }
        let events = run.summary.records_in;
        if self.rate.0.elapsed() >= Duration::from_secs(1) {
            let rate = (events - self.rate.1) as f64 / self.rate.0.elapsed().as_secs_f64();
            self.rate = (Instant::now(), events, rate);
        }
        self.checkpoints = run.summary.checkpoints_written;
        let results = self.results.clone();
        results.with(|results| {
            let state = DemoState {
                pipeline: run.pipeline,
                results,
                started: self.started,
                events_in: events,
                last_checkpoint: run.last_checkpoint,
                checkpoints: self.checkpoints,
                rate: self.rate.2,
                dead_letters: run.summary.bad_records,
            };
            match &mut self.screen {
                Screen::Tui(t) => t.draw_and_poll(&state, STEP),
                Screen::Plain => {
                    if self.last_print.elapsed() >= self.refresh {
                        plain::print_plain(&state);
                        self.last_print = Instant::now();
                    }
                    std::thread::sleep(STEP);
                    Ok(false)
                }
            }
        })
    }
}
