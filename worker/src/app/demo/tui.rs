//! The demo's terminal dashboard (ratatui). Reads [`DemoState`]; owns nothing
//! of the pipeline. Four views (overview, one symbol, alerts, pipeline),
//! switched by the keys of `tui_keys.rs` and named in a footer line.

use std::collections::BTreeMap;
use std::time::Duration;

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use super::tui_keys::{FOOTER, Key, Selection, ViewMode, on_key};
use super::view::{DemoState, OHLC_COLUMNS, header, trading_alerts};
use crate::clock::format_event_time;

pub struct Tui {
    terminal: DefaultTerminal,
    selection: Selection,
}

impl Tui {
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self {
            terminal: ratatui::try_init()?,
            selection: Selection::default(),
        })
    }

    pub fn stop(self) {
        ratatui::restore();
    }

    /// Draws one frame, then waits up to `wait` for a key. Returns `true` to quit.
    pub fn draw_and_poll(&mut self, state: &DemoState, wait: Duration) -> anyhow::Result<bool> {
        let symbols = state.symbols();
        let selection = self.selection;
        self.terminal
            .draw(|f| render(f, state, selection, &symbols))?;
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && k.kind != KeyEventKind::Release
        {
            return Ok(self.selection.apply(on_key(key(k)), symbols.len()));
        }
        Ok(false)
    }
}

/// The terminal's key event as the pure key map sees it.
fn key(k: KeyEvent) -> Key {
    match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Esc => Key::Esc,
        _ => Key::Other,
    }
}

/// Every view above one footer line naming the view and the shortcuts.
fn render(f: &mut ratatui::Frame, state: &DemoState, sel: Selection, symbols: &[String]) {
    let [body, footer] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(1)]).areas(f.area());
    match sel.mode {
        ViewMode::Overview => render_overview(f, body, state),
        ViewMode::Symbol => render_symbol(f, body, state, sel, symbols),
        ViewMode::Alerts => render_alerts(f, body, state),
        ViewMode::Pipeline => render_pipeline(f, body, state),
    }
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                format!(" [{}] ", sel.mode.title()),
                Style::new().add_modifier(Modifier::REVERSED),
            ),
            Span::styled(format!(" {FOOTER}"), Style::new().fg(Color::Cyan)),
        ])),
        footer,
    );
}

fn render_overview(f: &mut ratatui::Frame, area: Rect, state: &DemoState) {
    let [top, bars, bottom] = Layout::vertical([
        Constraint::Length(7),
        Constraint::Min(10),
        Constraint::Length(12),
    ])
    .areas(area);
    let [bars_5s, bars_1m] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(bars);
    let [alerts, streams] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(bottom);

    f.render_widget(header_panel(state, " tickflow demo — overview "), top);
    let rows = state.latest_by("ohlc_5s", "symbol");
    f.render_widget(
        ohlc_table(rows, " OHLC 5s (latest closed bar) ", &OHLC_COLUMNS),
        bars_5s,
    );
    let rows = state.latest_by("ohlc_1m", "symbol");
    f.render_widget(ohlc_table(rows, " OHLC 1m ", &OHLC_1M_COLUMNS), bars_1m);
    f.render_widget(
        alerts_table(alert_rows(state, 5, 3, 2), alerts_title(state)),
        alerts,
    );

    let stream_rows: Vec<Row> = state
        .pipeline
        .streams()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let m = state.pipeline.stream_metrics(i);
            Row::new(vec![
                s.name.clone(),
                m.rows_out.to_string(),
                m.late_events.to_string(),
                m.open_windows.to_string(),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            stream_rows,
            [
                Constraint::Length(17),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(6),
            ],
        )
        .header(bold_row(&["stream", "rows out", "late", "open"]))
        .block(Block::default().borders(Borders::ALL).title(" Streams ")),
        streams,
    );
}

/// One symbol: its recent 5 s and 1 m bars and the alerts naming it.
fn render_symbol(
    f: &mut ratatui::Frame,
    area: Rect,
    state: &DemoState,
    sel: Selection,
    symbols: &[String],
) {
    let Some(i) = sel.symbol_index(symbols.len()) else {
        let wait = Paragraph::new("no bars yet: waiting for the first closed 5 s bar")
            .block(Block::default().borders(Borders::ALL).title(" Symbol "));
        f.render_widget(wait, area);
        return;
    };
    let symbol = &symbols[i];
    let [bars_5s, bars_1m, alerts] = Layout::vertical([
        Constraint::Percentage(45),
        Constraint::Percentage(25),
        Constraint::Percentage(30),
    ])
    .areas(area);
    let title = format!(
        " Symbol {symbol} ({}/{}) — 5s bars, newest first ",
        i + 1,
        symbols.len()
    );
    let rows = state.newest_of("ohlc_5s", symbol, bars_5s.height as usize);
    f.render_widget(ohlc_table(rows, &title, &OHLC_COLUMNS), bars_5s);
    let rows = state.newest_of("ohlc_1m", symbol, bars_1m.height as usize);
    f.render_widget(ohlc_table(rows, " 1m bars ", &OHLC_1M_COLUMNS), bars_1m);
    let rows: Vec<Row> = alert_lines(state, 50, 20, 20)
        .into_iter()
        .filter(|(line, _)| line[1].split(' ').any(|w| w == symbol))
        .map(|(line, color)| Row::new(line).style(Style::new().fg(color)))
        .collect();
    f.render_widget(alerts_table(rows, format!(" Alerts for {symbol} ")), alerts);
}

/// Every alert stream, as many of each as fit.
fn render_alerts(f: &mut ratatui::Frame, area: Rect, state: &DemoState) {
    let n = area.height as usize;
    f.render_widget(
        alerts_table(
            alert_rows(state, n, n / 3, n / 4),
            format!(" All alerts —{}", alerts_title(state)),
        ),
        area,
    );
}

/// What the pipeline did: figures overall, then per source and per stream.
fn render_pipeline(f: &mut ratatui::Frame, area: Rect, state: &DemoState) {
    let [top, sources, streams] = Layout::vertical([
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Min(5),
    ])
    .areas(area);
    let mut figures = header(state);
    figures.push(("dead letters".into(), state.dead_letters.to_string()));
    f.render_widget(figures_panel(figures, " Pipeline "), top);

    let source_rows: Vec<Row> = state
        .pipeline
        .source_names()
        .into_iter()
        .map(|s| {
            let wm = state.pipeline.watermark(&s).unwrap_or(i64::MIN);
            let records = state.pipeline.records_in(&s).to_string();
            Row::new(vec![s, records, format_event_time(wm)])
        })
        .collect();
    f.render_widget(
        Table::new(
            source_rows,
            [
                Constraint::Length(17),
                Constraint::Length(12),
                Constraint::Min(20),
            ],
        )
        .header(bold_row(&["source", "records in", "watermark"]))
        .block(Block::default().borders(Borders::ALL).title(" Sources ")),
        sources,
    );

    let stream_rows: Vec<Row> = state
        .pipeline
        .streams()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let m = state.pipeline.stream_metrics(i);
            Row::new(vec![
                s.name.clone(),
                m.rows_in.to_string(),
                m.rows_out.to_string(),
                m.late_events.to_string(),
                m.rejected_rows.to_string(),
                m.open_windows.to_string(),
                format_event_time(s.watermark()),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(17),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Min(20),
    ];
    f.render_widget(
        Table::new(stream_rows, widths)
            .header(bold_row(&[
                "stream",
                "rows in",
                "rows out",
                "late",
                "rejected",
                "open",
                "watermark",
            ]))
            .block(Block::default().borders(Borders::ALL).title(" Streams ")),
        streams,
    );
}

fn header_panel<'a>(state: &DemoState, title: &'a str) -> Paragraph<'a> {
    figures_panel(header(state), title)
}

fn figures_panel<'a>(figures: Vec<(String, String)>, title: &'a str) -> Paragraph<'a> {
    let lines: Vec<Line> = figures
        .into_iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>12}: "), Style::new().fg(Color::Cyan)),
                Span::raw(v),
            ])
        })
        .collect();
    Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title))
}

fn bold_row<'a>(cells: &[&'a str]) -> Row<'a> {
    Row::new(cells.to_vec()).style(Style::new().add_modifier(Modifier::BOLD))
}

fn alerts_title(state: &DemoState) -> String {
    format!(
        " Alerts: {} trading, {} large trades, {} volume anomalies ",
        state.total("alerts"),
        state.total("large_trades"),
        state.total("volume_anomalies")
    )
}

fn alerts_table<'a>(rows: Vec<Row<'a>>, title: String) -> Table<'a> {
    Table::new(
        rows,
        [
            Constraint::Length(23),
            Constraint::Length(12),
            Constraint::Min(20),
            Constraint::Length(9),
        ],
    )
    .block(Block::default().borders(Borders::ALL).title(title))
}

fn alert_rows<'a>(state: &DemoState, trading: usize, large: usize, volume: usize) -> Vec<Row<'a>> {
    alert_lines(state, trading, large, volume)
        .into_iter()
        .map(|(line, color)| Row::new(line).style(Style::new().fg(color)))
        .collect()
}

/// Trading alerts, large trades and volume anomalies (up to so many of
/// each) as (kind, who, what, at) with their colour.
fn alert_lines(
    state: &DemoState,
    trading: usize,
    large: usize,
    volume: usize,
) -> Vec<(Vec<String>, Color)> {
    let mut lines = Vec::new();
    for line in trading_alerts(state, trading) {
        let color = if line[0] == "ARBITRAGE" {
            Color::Green
        } else {
            Color::LightRed
        };
        lines.push((line.to_vec(), color));
    }
    for r in state.newest("large_trades", large) {
        let what = format!("{} {} @ {}", r["side"], r["volume"], r["price"]);
        let line = vec![
            "LARGE TRADE".into(),
            r["symbol"].clone(),
            what,
            r["ts"].clone(),
        ];
        lines.push((line, Color::Yellow));
    }
    for r in state.newest("volume_anomalies", volume) {
        let what = format!("total {} max {}", r["total_volume"], r["max_volume"]);
        let line = vec![
            "VOLUME".into(),
            r["symbol"].clone(),
            what,
            r["window_end"].clone(),
        ];
        lines.push((line, Color::Magenta));
    }
    lines
}

/// Columns of the 1 m bar tables.
const OHLC_1M_COLUMNS: [&str; 7] = [
    "symbol",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "vwap",
];

fn ohlc_table<'a>(rows: Vec<BTreeMap<String, String>>, title: &str, columns: &[&str]) -> Table<'a> {
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|r| {
            let up = r.get("close").and_then(|c| c.parse::<f64>().ok())
                >= r.get("open").and_then(|o| o.parse::<f64>().ok());
            let color = if up { Color::Green } else { Color::Red };
            Row::new(
                columns
                    .iter()
                    .map(|c| r.get(*c).cloned().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .style(Style::new().fg(color))
        })
        .collect();
    let widths: Vec<Constraint> = columns.iter().map(|_| Constraint::Min(7)).collect();
    Table::new(rows, widths)
        .header(
            Row::new(
                columns
                    .iter()
                    .map(|c| {
                        c.replace("window_end", "bar end")
                            .replace("tick_count", "ticks")
                    })
                    .collect::<Vec<_>>(),
            )
            .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_string()),
        )
}
