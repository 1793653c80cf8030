//! The demo's terminal dashboard (ratatui). Reads [`DemoState`]; owns nothing
//! of the pipeline.

use std::time::Duration;

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use super::view::{DemoState, OHLC_COLUMNS, header, trading_alerts};

pub struct Tui {
    terminal: DefaultTerminal,
}

impl Tui {
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self {
            terminal: ratatui::try_init()?,
        })
    }

    pub fn stop(self) {
        ratatui::restore();
    }

    /// Draws one frame, then waits up to `wait` for a key. Returns `true` to quit.
    pub fn draw_and_poll(&mut self, state: &DemoState, wait: Duration) -> anyhow::Result<bool> {
        self.terminal.draw(|f| render(f, state))?;
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
        {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            return Ok(ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc));
        }
        Ok(false)
    }
}

fn render(f: &mut ratatui::Frame, state: &DemoState) {
    let [top, bars, bottom] = Layout::vertical([
        Constraint::Length(7),
        Constraint::Min(10),
        Constraint::Length(12),
    ])
    .areas(f.area());
    let [bars_5s, bars_1m] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(bars);
    let [alerts, streams] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(bottom);

    let lines: Vec<Line> = header(state)
        .into_iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>11}: "), Style::new().fg(Color::Cyan)),
                Span::raw(v),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" tickflow demo — q to quit "),
        ),
        top,
    );

    f.render_widget(
        ohlc_table(
            state,
            "ohlc_5s",
            " OHLC 5s (latest closed bar) ",
            &OHLC_COLUMNS,
        ),
        bars_5s,
    );
    f.render_widget(
        ohlc_table(
            state,
            "ohlc_1m",
            " OHLC 1m ",
            &[
                "symbol",
                "window_end",
                "open",
                "high",
                "low",
                "close",
                "vwap",
            ],
        ),
        bars_1m,
    );

    let mut alert_rows = Vec::new();
    for [kind, symbol, what, at] in trading_alerts(state, 5) {
        let color = if kind == "ARBITRAGE" {
            Color::Green
        } else {
            Color::LightRed
        };
        alert_rows.push(Row::new(vec![kind, symbol, what, at]).style(Style::new().fg(color)));
    }
    for r in state.newest("large_trades", 3) {
        alert_rows.push(
            Row::new(vec![
                "LARGE TRADE".to_string(),
                r["symbol"].clone(),
                format!("{} {} @ {}", r["side"], r["volume"], r["price"]),
                r["ts"].clone(),
            ])
            .style(Style::new().fg(Color::Yellow)),
        );
    }
    for r in state.newest("volume_anomalies", 2) {
        alert_rows.push(
            Row::new(vec![
                "VOLUME".to_string(),
                r["symbol"].clone(),
                format!("total {} max {}", r["total_volume"], r["max_volume"]),
                r["window_end"].clone(),
            ])
            .style(Style::new().fg(Color::Magenta)),
        );
    }
    let title = format!(
        " Alerts: {} trading, {} large trades, {} volume anomalies ",
        state.total("alerts"),
        state.total("large_trades"),
        state.total("volume_anomalies")
    );
    f.render_widget(
        Table::new(
            alert_rows,
            [
                Constraint::Length(16),
                Constraint::Length(7),
                Constraint::Min(20),
                Constraint::Length(9),
            ],
        )
        .block(Block::default().borders(Borders::ALL).title(title)),
        alerts,
    );

    let stream_rows: Vec<Row> = state
        .pipeline
        .streams()
        .iter()
        .map(|s| {
            let m = s.metrics();
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
        .header(
            Row::new(vec!["stream", "rows out", "late", "open"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(" Streams ")),
        streams,
    );
}

fn ohlc_table<'a>(state: &DemoState, stream: &str, title: &'a str, columns: &[&str]) -> Table<'a> {
    let rows: Vec<Row> = state
        .latest_by(stream, "symbol")
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
        .block(Block::default().borders(Borders::ALL).title(title))
}
