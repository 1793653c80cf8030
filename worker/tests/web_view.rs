//! The live web view in a real browser: headless Chromium (Debian's
//! `chromium`, installed by `tests/web/chromium.sh install`, which
//! `tests/run.sh` runs) loads the page while the demo runs and the test
//! reads the DOM it built: a chart with candles for every symbol, on both
//! timeframes, and alerts in the table. Hostile values (markup in a symbol,
//! an alert, the query name) must show as text, the endpoint must send its
//! Content-Security-Policy, refuse writes and cap the pages it serves.
//!
//! Screenshots go to `$TICKFLOW_TEST_ARTIFACTS/web-view/` if that is set,
//! else to `$CARGO_TARGET_DIR/tmp/web-view/` (cargo's `CARGO_TARGET_TMPDIR`).
//! There is no skip: without a browser the test fails and says how to get one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tickflow_worker::engine::{Catalog, EngineConfig, Pipeline};
use tickflow_worker::runtime::StatusHandle;
use tickflow_worker::runtime::http::serve_with;
use tickflow_worker::runtime::web::{MAX_CLIENTS, WebView, page_url};
use tickflow_worker::simulator::default_universe;

/// The browser: `TICKFLOW_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TICKFLOW_CHROMIUM") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!(
        "no chromium on the PATH (nor TICKFLOW_CHROMIUM): install it with `tests/web/chromium.sh install` \
         (tests/run.sh does); the web view is tested in a real browser, not skipped"
    );
}

/// Where the screenshots go (kept after the run).
fn artifacts() -> PathBuf {
    let base = std::env::var_os("TICKFLOW_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join("web-view");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with `args` on `url`, killed after a minute.
fn browser(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            // The page stops listening after a few updates (#updates=N);
            // then the network is idle and virtual time runs out.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish on {url} within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

fn dom(url: &str) -> String {
    browser(&["--dump-dom"], url)
}

fn screenshot(url: &str, path: &Path) {
    let shot = format!("--screenshot={}", path.display());
    browser(&[&shot, "--window-size=1280,900"], url);
    assert!(path.is_file(), "no screenshot at {}", path.display());
}

/// `data-candles` of the chart of `symbol` (the attribute values as the
/// DOM serializes them: `<`, `>`, `&` and `"` escaped).
fn candles_of(dom: &str, symbol: &str) -> Option<u64> {
    let at = dom.find(&format!("data-symbol=\"{symbol}\""))?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let v = tag.split("data-candles=\"").nth(1)?;
    v[..v.find('"')?].parse().ok()
}

/// The records-in figure of the pipeline panel, as shown.
fn records_in(dom: &str) -> &str {
    dom.split("data-key=\"records_in\">")
        .nth(1)
        .and_then(|v| v.split('<').next())
        .unwrap_or("")
}

fn attribute_number(dom: &str, attribute: &str) -> u64 {
    dom.split(&format!("{attribute}=\""))
        .nth(1)
        .and_then(|v| v[..v.find('"')?].parse().ok())
        .unwrap_or(0)
}

/// The text of the element with `id` (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
        return "";
    };
    let rest = &dom[at..];
    let start = rest.find('>').map_or(0, |i| i + 1);
    let end = rest[start..].find('<').map_or(rest.len(), |i| start + i);
    &rest[start..end]
}

/// The demo as a child process, killed when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo with `--web` on a free port; returns it and the URL it printed.
fn start_demo(dir: &Path) -> (Demo, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
        .args(["demo", "--plain", "--refresh", "1h", "--speed", "10"])
        .args(["--duration", "240s", "--web", "127.0.0.1:0"])
        .arg("--checkpoint-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let demo = Demo(child);
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("web view: ").map(str::to_string))
        .expect("the demo prints `web view: URL`");
    // Keep reading, so a full pipe never stops the demo.
    std::thread::spawn(move || lines.for_each(drop));
    (demo, url)
}

/// Loads `url` until `done` holds for its DOM (or panics after `limit`).
fn until(url: &str, limit: Duration, done: impl Fn(&str) -> Result<(), String>) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let dom = dom(url);
        match done(&dom) {
            Ok(()) => return dom,
            Err(why) if Instant::now() > deadline => {
                panic!("{why} after {limit:?}; last DOM:\n{dom}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

fn every_symbol_charted(dom: &str, stream: &str) -> Result<(), String> {
    let source = text_of(dom, "frame-source");
    if !source.ends_with(stream) {
        return Err(format!("charts drawn {source:?}, not from {stream}"));
    }
    for s in default_universe() {
        match candles_of(dom, &s.symbol) {
            Some(n) if n >= 2 => {}
            other => return Err(format!("{}: {other:?} candles", s.symbol)),
        }
    }
    let canvases = dom.matches("<canvas").count();
    if canvases < default_universe().len() {
        return Err(format!("{canvases} canvases"));
    }
    Ok(())
}

#[test]
fn demo_page_draws_candles_for_every_symbol_and_lists_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (_demo, url) = start_demo(dir.path());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let page = format!("{url}#updates=3");
    // The pipeline panel shows the /status of the moment: a page loaded
    // right after start-up may see no records yet (Chromium 156 spends its
    // virtual time budget faster), so it is loaded again until it does.
    let dom = until(&page, Duration::from_secs(90), |dom| {
        every_symbol_charted(dom, "from ohlc_5s")?;
        if attribute_number(dom, "data-alerts") == 0 {
            return Err("no alerts yet".into());
        }
        match records_in(dom) {
            "" | "0" => Err("no records in the pipeline panel yet".into()),
            _ => Ok(()),
        }
    });
    assert!(
        dom.contains("<td class=\"stream\">alerts</td>"),
        "market alerts listed"
    );
    assert_eq!(text_of(&dom, "query-name"), "demo");
    assert!(text_of(&dom, "connection").starts_with("stopped after"));
    let records = records_in(&dom);
    assert!(
        !records.is_empty() && records != "0",
        "pipeline panel: {records:?}"
    );
    screenshot(&page, &artifacts().join("web-view.png"));

    // The 1 m timeframe: the demo's ohlc_1m stream, every symbol.
    let minute = format!("{url}#frame=60000&updates=3");
    until(&minute, Duration::from_secs(90), |dom| {
        every_symbol_charted(dom, "from ohlc_1m")
    });
    screenshot(&minute, &artifacts().join("web-view-1m.png"));
}

const HOSTILE_SYMBOL: &str = "<img src=x onerror=\"document.title='pwned'\">";
const HOSTILE_ALERT: &str = "</td><td>injected<script>document.title='pwned'</script>";

fn bars(symbols: &[&str]) -> RecordBatch {
    let n = symbols.len();
    let f = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("window_start", ts, false),
        Field::new("open", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
        Field::new("close", DataType::Float64, false),
        Field::new("volume", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(symbols.to_vec())),
            Arc::new(TimestampMillisecondArray::from(vec![1_767_623_400_000; n])),
            f(10.0),
            f(12.0),
            f(9.0),
            f(11.0),
            f(100.0),
        ],
    )
    .unwrap()
}

fn alerts() -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("ts", ts, false),
        Field::new("alert", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![HOSTILE_SYMBOL])),
            Arc::new(TimestampMillisecondArray::from(vec![1_767_623_401_000])),
            Arc::new(StringArray::from(vec![HOSTILE_ALERT])),
            Arc::new(Float64Array::from(vec![1.5])),
        ],
    )
    .unwrap()
}

/// A web view served in this process, fed rows directly.
fn hostile_view() -> (WebView, SocketAddr) {
    let sql = format!(
        "{}\nCREATE STREAM alerts AS SELECT symbol, ts, exchange AS alert, price AS value FROM market_ticks;",
        tickflow_worker::queries::BUILTIN_QUERIES[0].1
    );
    let pipeline = Pipeline::new(&sql, &Catalog::builtin(), &EngineConfig::default()).unwrap();
    let name = "<b>q</b><script>document.title='pwned'</script>";
    let status = StatusHandle::new(name);
    let web = WebView::start(name, status.clone()).unwrap();
    web.configure(pipeline.streams());
    let bound = serve_with("127.0.0.1:0".parse().unwrap(), status, Some(web.clone())).unwrap();
    web.offer("ohlc_5s", &bars(&["AAPL", HOSTILE_SYMBOL]));
    web.offer("alerts", &alerts());
    // The publisher takes offered rows every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    (web, bound)
}

/// A raw HTTP/1.0 exchange: status line and headers, body.
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

#[test]
fn hostile_values_show_as_text_and_the_endpoint_stays_read_only() {
    let (web, addr) = hostile_view();
    let url = page_url(addr);
    let dom = dom(&format!("{url}#updates=1"));
    // Shown as text, escaped by the DOM's serialization; never as elements.
    assert!(
        dom.contains(
            "&lt;/td&gt;&lt;td&gt;injected&lt;script&gt;document.title='pwned'&lt;/script&gt;"
        ),
        "{dom}"
    );
    assert!(dom.contains("<title>tickflow live view</title>"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(
        !dom.contains("<b>q</b>") && !dom.contains("<script>document"),
        "{dom}"
    );
    assert_eq!(
        candles_of(
            &dom,
            "&lt;img src=x onerror=&quot;document.title='pwned'&quot;&gt;"
        ),
        Some(1)
    );
    assert_eq!(candles_of(&dom, "AAPL"), Some(1));
    assert_eq!(attribute_number(&dom, "data-alerts"), 1);
    screenshot(
        &format!("{url}#updates=1"),
        &artifacts().join("web-view-hostile.png"),
    );

    // Self only, and nothing to write to.
    let (head, _) = http(addr, "GET / HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.contains(
            "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self';"
        ),
        "{head}"
    );
    assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
    let (head, _) = http(addr, "POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert!(head.contains(" 405 "), "{head}");
    let (head, _) = http(addr, "GET /vendor/../../Cargo.toml HTTP/1.0\r\n\r\n");
    assert!(head.contains(" 404 "), "{head}");

    // Pages that never read hold their slots, not the endpoint; one more
    // than the cap is refused, and /status answers throughout. The pages
    // Chromium opened above hold slots until a write to them fails.
    wait_for(|| web.clients() == 0, Duration::from_secs(20));
    assert_eq!(web.clients(), 0, "Chromium's pages gave their slots back");
    // All at once, as pages reconnecting after a restart would come: every
    // one is served, none queued behind another's open stream.
    let mut idle = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        idle.push(s);
    }
    // Generous: under a loaded CI run one page took over 5 s to be served.
    wait_for(|| web.clients() == MAX_CLIENTS, Duration::from_secs(60));
    // A client that connects and sends nothing holds only its own thread.
    let _silent = TcpStream::connect(addr).unwrap();
    assert_eq!(web.clients(), MAX_CLIENTS);
    let (head, _) = http(addr, "GET /events HTTP/1.0\r\n\r\n");
    assert!(head.contains(" 503 "), "{head}");
    let t0 = Instant::now();
    let (head, body) = http(addr, "GET /status HTTP/1.0\r\n\r\n");
    assert!(
        head.contains(" 200 ") && body.contains("\"state\""),
        "{head}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "/status took {:?}",
        t0.elapsed()
    );
    // Closed pages give their slots back (noticed at the next update).
    drop(idle);
    wait_for(|| web.clients() == 0, Duration::from_secs(10));
    assert_eq!(web.clients(), 0);
}

/// Polls `done` until it holds or `limit` passes (the caller asserts).
fn wait_for(done: impl Fn() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
