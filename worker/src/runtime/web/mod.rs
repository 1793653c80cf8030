//! The live web view: candlestick charts of the OHLC streams, the alerts,
//! and the pipeline's figures, served on the worker's HTTP port (`/`) and
//! kept current over Server-Sent Events (`/events`).
//!
//! Data path and why it cannot slow the pipeline down:
//!
//! ```text
//! run loop ── Tee sink ──▶ WebView::offer (Arc clone of the batch, bounded queue)
//!                               │ every 250 ms, on the "web-publish" thread:
//!                               ▼
//!                  Feed (rings of JSON rows) ─▶ one update message ─▶ each client's
//!                                                                    bounded channel
//!                                                                         │
//!                                 the page's connection thread ◀──┘ writes it
//! ```
//!
//! Invariants: the run loop only clones `Arc`s into a queue bounded per
//! stream; JSON is made once per row on the publisher thread; a page gets
//! at most `1 / PUBLISH_EVERY` messages a second; a page that does not
//! keep up (its channel full) is dropped, a socket that takes no data for
//! `http::server::IO_TIMEOUT` is closed; at most `MAX_CLIENTS` pages at a
//! time. The pure parts (roles, rings, JSON) are in [`feed`], the embedded
//! page in [`assets`], the SSE connection in [`sse`].

pub mod assets;
pub mod feed;
pub mod sse;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use crate::engine::RunningStream;
use crate::runtime::StatusHandle;
use feed::{Delta, Feed, Rate, Role, pipeline_panel, role_of};

/// How often new rows are sent to the pages (coalesced).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The pipeline panel is sent at least this often, rows or not.
const PANEL_EVERY: Duration = Duration::from_secs(1);
/// Pages watching at once; one more is answered 503.
pub const MAX_CLIENTS: usize = 32;
/// Messages a page may fall behind before it is dropped (~4 s of updates).
const CLIENT_QUEUE: usize = 16;

/// Why a page could not be subscribed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("{MAX_CLIENTS} pages are open already; close one and reload")]
    TooManyClients,
}

/// Shared handle: the Tee sink offers rows, the HTTP endpoint subscribes pages.
#[derive(Clone)]
pub struct WebView {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    status: StatusHandle,
    pending: Mutex<Pending>,
    hub: Mutex<Hub>,
    clients: AtomicUsize,
}

/// Batches the run loop offered since the last publish, per shown stream.
#[derive(Default)]
struct Pending {
    roles: HashMap<String, Role>,
    roles_changed: bool,
    batches: BTreeMap<String, (VecDeque<RecordBatch>, usize)>,
}

/// What the publisher keeps: the rings and the pages' channels.
struct Hub {
    feed: Feed,
    panel: serde_json::Value,
    rate: Rate,
    pages: Vec<SyncSender<Arc<str>>>,
}

impl WebView {
    /// A web view of the worker whose status is `status`; starts the
    /// publisher thread.
    pub fn start(name: &str, status: StatusHandle) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            status,
            pending: Mutex::default(),
            hub: Mutex::new(Hub {
                feed: Feed::default(),
                panel: serde_json::Value::Null,
                rate: Rate::default(),
                pages: Vec::new(),
            }),
            clients: AtomicUsize::new(0),
        });
        let publisher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("web-publish".into())
            .spawn(move || publisher.run())?;
        Ok(Self { shared })
    }

    /// Which of a pipeline's streams the page shows (call once per planned
    /// pipeline, before its rows are offered).
    pub fn configure(&self, streams: &[RunningStream]) {
        let roles = streams
            .iter()
            .filter_map(|s| Some((s.name.clone(), role_of(s)?)))
            .collect();
        let mut p = self.shared.pending.lock().expect("not poisoned");
        p.roles = roles;
        p.roles_changed = true;
        p.batches.clear();
    }

    /// Rows a stream emitted. Cheap on purpose (the run loop calls it): an
    /// `Arc` clone into a queue that keeps per stream only the rows its ring
    /// would keep.
    pub fn offer(&self, stream: &str, rows: &RecordBatch) {
        if rows.num_rows() == 0 {
            return;
        }
        let mut p = self.shared.pending.lock().expect("not poisoned");
        let Some(ring) = p.roles.get(stream).map(Role::ring) else {
            return;
        };
        let (queue, count) = p.batches.entry(stream.to_string()).or_default();
        queue.push_back(rows.clone());
        *count += rows.num_rows();
        while queue.len() > 1 && *count - queue[0].num_rows() >= ring {
            *count -= queue.pop_front().expect("non-empty").num_rows();
        }
    }

    /// Pages watching now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// A new page: its slot (released on drop) and its messages, the first
    /// being the snapshot of everything kept.
    pub fn subscribe(&self) -> Result<(ClientSlot, Receiver<Arc<str>>), SubscribeError> {
        let taken = self
            .shared
            .clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CLIENTS).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(SubscribeError::TooManyClients);
        }
        let slot = ClientSlot(Arc::clone(&self.shared));
        let (tx, rx) = sync_channel(CLIENT_QUEUE);
        let mut hub = self.shared.hub.lock().expect("not poisoned");
        let snapshot = hub.feed.snapshot(&self.shared.name, &hub.panel);
        // A fresh channel has room: the snapshot is always its first message.
        let _ = tx.try_send(Arc::from(snapshot));
        hub.pages.push(tx);
        Ok((slot, rx))
    }
}

/// The page's address for a person to open: an unspecified bind address
/// (`0.0.0.0`, `::`) is shown as loopback.
pub fn page_url(bound: std::net::SocketAddr) -> String {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{ip}:{}/", bound.port())
}

impl std::fmt::Debug for WebView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebView")
            .field("name", &self.shared.name)
            .field("clients", &self.clients())
            .finish()
    }
}

/// A page's place among the `MAX_CLIENTS`, given back when its connection ends.
pub struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The publisher: coalesces what arrived into one message per
    /// `PUBLISH_EVERY` and hands it to every page. Never blocks on a page.
    fn run(&self) {
        let mut last_sent = Instant::now();
        loop {
            std::thread::sleep(PUBLISH_EVERY);
            let (roles, batches) = {
                let mut p = self.pending.lock().expect("not poisoned");
                let roles = std::mem::take(&mut p.roles_changed).then(|| p.roles.clone());
                (roles, std::mem::take(&mut p.batches))
            };
            let status = self.status.get();
            let mut hub = self.hub.lock().expect("not poisoned");
            if let Some(roles) = roles {
                hub.feed.configure(&roles);
            }
            let mut delta = Delta::default();
            for (stream, (queue, _)) in &batches {
                for batch in queue {
                    hub.feed.ingest(stream, batch, &mut delta);
                }
            }
            let panel = pipeline_panel(&status, &mut hub.rate, crate::clock::now_ms());
            hub.panel = panel;
            if hub.pages.is_empty() || (delta.is_empty() && last_sent.elapsed() < PANEL_EVERY) {
                continue;
            }
            let msg: Arc<str> = Arc::from(hub.feed.message(&self.name, &delta, &hub.panel, false));
            hub.pages
                .retain(|page| match page.try_send(Arc::clone(&msg)) {
                    Ok(()) => true,
                    // Too slow (its queue is full) or gone: drop it; a page
                    // that reconnects gets a snapshot.
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                });
            last_sent = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Catalog, EngineConfig, Pipeline};
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::mpsc::TryRecvError;

    /// One bar of `ohlc_5s` starting at `t`.
    fn bar(t: i64) -> RecordBatch {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut fields = vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("window_start", ts, false),
        ];
        let mut columns: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["AAPL"])),
            Arc::new(TimestampMillisecondArray::from(vec![t])),
        ];
        for c in ["open", "high", "low", "close"] {
            fields.push(Field::new(c, DataType::Float64, false));
            columns.push(Arc::new(Float64Array::from(vec![1.0])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn a_page_that_falls_behind_is_dropped_and_the_others_are_not_held_up() {
        let sql = crate::queries::BUILTIN_QUERIES[0].1;
        let pipeline = Pipeline::new(sql, &Catalog::builtin(), &EngineConfig::default()).unwrap();
        let web = WebView::start("q", StatusHandle::new("q")).unwrap();
        web.configure(pipeline.streams());
        let (slow_slot, slow) = web.subscribe().unwrap();
        let (_fast_slot, fast) = web.subscribe().unwrap();
        assert_eq!(web.clients(), 2);
        let mut fast_got = 0;
        // A new bar every 100 ms: a message every PUBLISH_EVERY, more than
        // CLIENT_QUEUE of them while `slow` reads nothing.
        let deadline = Instant::now() + PUBLISH_EVERY * (CLIENT_QUEUE as u32 + 8);
        let mut t = 0;
        while Instant::now() < deadline {
            web.offer("ohlc_5s", &bar(t));
            t += 5_000;
            while fast.try_recv().is_ok() {
                fast_got += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            fast_got > CLIENT_QUEUE,
            "the reading page got {fast_got} messages"
        );
        // The slow page holds what fitted, then its channel is closed.
        let mut queued = 0;
        let end = loop {
            match slow.try_recv() {
                Ok(_) => queued += 1,
                Err(e) => break e,
            }
        };
        assert_eq!((queued, end), (CLIENT_QUEUE, TryRecvError::Disconnected));
        // Its slot goes when its connection does.
        drop(slow_slot);
        assert_eq!(web.clients(), 1);
    }
}
