// tickflow live view. Reads /events (Server-Sent Events: a snapshot, then
// updates at most a few times a second) and draws candlestick charts per
// symbol, the alerts table and the pipeline panel. Read-only: it sends
// nothing back. Every value from the worker reaches the page through
// textContent or a data attribute, never as markup.
"use strict";

(function () {
  const MAX_BARS = 600;        // per symbol and stream, in the page
  const MAX_ALERT_ROWS = 200;  // rows in the alerts table

  // Options in the address's fragment (read only here, never shown):
  // #frame=60000 opens on the 1 m bars; #updates=N stops listening after N
  // messages (a still picture, for screenshots and the browser test).
  const options = new URLSearchParams(location.hash.slice(1));
  const startFrame = Number(options.get("frame")) || 5000;
  const stopAfter = Number(options.get("updates")) || 0;

  const state = {
    layout: { charts: [], alert_streams: [] },
    bars: new Map(),           // stream -> symbol -> Map(t ms -> [o, h, l, c, v])
    frame: startFrame,
    charts: new Map(),         // symbol -> { section, chart, series, last }
    alertsSeen: 0,
    updates: 0,
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // --- formatting -------------------------------------------------------
  const pad = (n, w) => String(n).padStart(w, "0");
  function time(ms) {
    if (typeof ms !== "number") return "-";
    const d = new Date(ms);
    return `${pad(d.getUTCHours(), 2)}:${pad(d.getUTCMinutes(), 2)}:${pad(d.getUTCSeconds(), 2)}.${pad(d.getUTCMilliseconds(), 3)}`;
  }
  function num(v) {
    if (typeof v !== "number") return v === null || v === undefined ? "-" : String(v);
    const digits = Number.isInteger(v) ? 0 : 2;
    return v.toLocaleString("en", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function text(v) {
    return v === null || v === undefined ? "-" : String(v);
  }

  // --- bars -------------------------------------------------------------
  function addBars(stream, rows) {
    let bySymbol = state.bars.get(stream);
    if (!bySymbol) state.bars.set(stream, (bySymbol = new Map()));
    for (const [symbol, t, o, h, l, c, v] of rows) {
      const key = String(symbol);
      let bars = bySymbol.get(key);
      if (!bars) bySymbol.set(key, (bars = new Map()));
      bars.set(t, [o, h, l, c, v]);
      if (bars.size > MAX_BARS) {
        const oldest = Math.min(...bars.keys());
        bars.delete(oldest);
      }
    }
  }

  // The stream the chosen timeframe is drawn from: one of exactly that bar
  // length, else the longest shorter one that divides it (aggregated here).
  function source(frame) {
    const charts = state.layout.charts || [];
    const exact = charts.find((c) => c.frame_ms === frame);
    if (exact) return { stream: exact.stream, aggregate: false };
    const finer = charts
      .filter((c) => c.frame_ms < frame && frame % c.frame_ms === 0)
      .sort((a, b) => b.frame_ms - a.frame_ms)[0];
    return finer ? { stream: finer.stream, aggregate: true } : null;
  }

  // Bars of one symbol at `frame`, ascending by time, as the chart wants
  // them (seconds). Aggregating: first open, max high, min low, last close.
  function barsFor(src, symbol, frame) {
    const bars = (state.bars.get(src.stream) || new Map()).get(symbol);
    if (!bars) return [];
    const sorted = [...bars.entries()].sort((a, b) => a[0] - b[0]);
    if (!src.aggregate) {
      return sorted.map(([t, [o, h, l, c]]) => ({ time: t / 1000, open: o, high: h, low: l, close: c }));
    }
    const out = [];
    for (const [t, [o, h, l, c]] of sorted) {
      const start = Math.floor(t / frame) * frame / 1000;
      const cur = out[out.length - 1];
      if (cur && cur.time === start) {
        cur.high = Math.max(cur.high, h);
        cur.low = Math.min(cur.low, l);
        cur.close = c;
      } else {
        out.push({ time: start, open: o, high: h, low: l, close: c });
      }
    }
    return out;
  }

  // --- charts -----------------------------------------------------------
  function chartFor(symbol) {
    let entry = state.charts.get(symbol);
    if (entry) return entry;
    const section = el("section", "chart");
    section.dataset.symbol = symbol;
    section.dataset.candles = "0";
    const title = el("h3");
    title.append(el("span", "symbol", symbol), el("span", "last", ""));
    const plot = el("div", "plot");
    section.append(title, plot);
    // Keep the charts in symbol order.
    const container = $("charts");
    const after = [...container.children].find((c) => c.dataset.symbol > symbol);
    container.insertBefore(section, after || null);
    container.dataset.symbols = String(container.children.length);
    const chart = LightweightCharts.createChart(plot, {
      autoSize: true,
      height: 180,
      layout: { background: { color: "#1c2030" }, textColor: "#d1d4dc", attributionLogo: false },
      grid: { vertLines: { color: "#2a2e39" }, horzLines: { color: "#2a2e39" } },
      timeScale: { timeVisible: true, secondsVisible: true },
      handleScroll: false,
      handleScale: false,
    });
    const series = chart.addSeries(LightweightCharts.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
      wickUpColor: "#26a69a", wickDownColor: "#ef5350",
    });
    entry = { section, chart, series, last: title.lastChild };
    state.charts.set(symbol, entry);
    return entry;
  }

  function drawCharts() {
    const src = source(state.frame);
    $("frame-source").textContent = src
      ? (src.aggregate ? `aggregated from ${src.stream}` : `from ${src.stream}`)
      : "no OHLC stream for this timeframe";
    const symbols = src ? [...((state.bars.get(src.stream) || new Map()).keys())] : [];
    for (const symbol of symbols) {
      const data = barsFor(src, symbol, state.frame);
      const c = chartFor(symbol);
      c.series.setData(data);
      c.section.dataset.candles = String(data.length);
      const lastBar = data[data.length - 1];
      if (lastBar) {
        c.last.textContent = num(lastBar.close);
        c.last.className = "last " + (lastBar.close >= lastBar.open ? "up" : "down");
      }
    }
    for (const [symbol, c] of state.charts) {
      if (!symbols.includes(symbol)) {
        c.series.setData([]);
        c.section.dataset.candles = "0";
      }
    }
  }

  // --- alerts -----------------------------------------------------------
  function addAlerts(alerts) {
    const body = $("alerts").tBodies[0];
    const sorted = [...alerts].sort((a, b) => (a.t || 0) - (b.t || 0));
    for (const a of sorted) {
      const tr = el("tr");
      tr.dataset.stream = text(a.stream);
      tr.append(
        el("td", "time", time(a.t)),
        el("td", "stream", text(a.stream)),
        el("td", "symbol", text(a.symbol)),
        el("td", "alert", text(a.alert)),
        el("td", "value", num(a.value)),
        el("td", "details", text(a.details)),
      );
      body.insertBefore(tr, body.firstChild);
      state.alertsSeen += 1;
    }
    while (body.rows.length > MAX_ALERT_ROWS) body.deleteRow(body.rows.length - 1);
    $("alerts").dataset.alerts = String(state.alertsSeen);
    $("alert-count").textContent = `(${state.alertsSeen})`;
  }

  // --- pipeline panel ---------------------------------------------------
  function figure(key, label, value) {
    let dd = document.querySelector(`#pipeline-figures dd[data-key="${key}"]`);
    if (!dd) {
      const div = el("div");
      dd = el("dd");
      dd.dataset.key = key;
      div.append(el("dt", null, label), dd);
      $("pipeline-figures").append(div);
    }
    dd.textContent = value;
  }

  function drawPipeline(p) {
    if (!p) return;
    const cp = p.last_checkpoint;
    const seconds = (ms) => (typeof ms === "number" ? `${(ms / 1000).toFixed(1)} s` : "-");
    figure("state", "state", text(p.state));
    figure("records_per_s", "records/s", num(p.records_per_s));
    figure("records_in", "records in", num(p.records_in));
    figure("records_out", "records out", p.records_out ? num(p.records_out) : "- (no counting sink)");
    figure("watermark", "watermark (UTC)", time(p.watermark_ms));
    figure("watermark_delay", "watermark delay",
      typeof p.watermark_delay_ms === "number" ? seconds(p.watermark_delay_ms)
        : (typeof p.watermark_ms === "number" ? "- (replayed or simulated time)" : "-"));
    figure("lag", "lag (messages)", num(p.lag));
    figure("checkpoint", "last checkpoint",
      cp ? `#${cp.id}, ${seconds(p.now_ms - cp.time_ms)} ago, ${cp.duration_ms} ms, ${num(cp.bytes)} B` : "none yet");
    figure("dead_letters", "dead letters", num(p.dead_letters));
    figure("late_events", "late events", num(p.late_events));
    figure("failovers", "failovers", num(p.failovers));
  }

  // --- messages ---------------------------------------------------------
  function reset() {
    state.bars.clear();
    state.alertsSeen = 0;
    const body = $("alerts").tBodies[0];
    while (body.rows.length) body.deleteRow(0);
  }

  function onMessage(msg) {
    if (msg.reset) reset();
    state.layout = msg.layout || state.layout;
    $("query-name").textContent = text(msg.name);
    for (const [stream, rows] of Object.entries(msg.candles || {})) addBars(stream, rows);
    drawCharts();
    if (msg.alerts && msg.alerts.length) addAlerts(msg.alerts);
    else if (msg.reset) addAlerts([]);
    drawPipeline(msg.pipeline);
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
  }

  function connect() {
    const conn = $("connection");
    const events = new EventSource("/events");
    events.onopen = () => { conn.dataset.state = "live"; conn.textContent = "live"; };
    events.onerror = () => { conn.dataset.state = "lost"; conn.textContent = "reconnecting…"; };
    events.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (_) { return; }
      onMessage(msg);
      if (stopAfter && state.updates >= stopAfter) {
        events.close();
        conn.dataset.state = "stopped";
        conn.textContent = `stopped after ${state.updates} updates`;
      }
    };
  }

  function timeframes() {
    for (const b of document.querySelectorAll("#timeframes button")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.frame) === state.frame));
      b.addEventListener("click", () => {
        state.frame = Number(b.dataset.frame);
        for (const o of document.querySelectorAll("#timeframes button")) {
          o.setAttribute("aria-pressed", String(o === b));
        }
        drawCharts();
      });
    }
  }

  timeframes();
  connect();
})();
