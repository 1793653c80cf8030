//! The terminal dashboard's view switching, kept pure: which view is shown,
//! which symbol is selected, and what each key does. The drawing code in
//! `tui.rs` only reads this, so the key map is tested without a terminal.

/// The dashboard's views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ViewMode {
    /// Header, latest bars per symbol, newest alerts, streams (the default).
    #[default]
    Overview,
    /// One symbol's recent bars and alerts.
    Symbol,
    /// Every alert stream, full height.
    Alerts,
    /// Records in/out, watermarks, late events, dead letters, checkpoints.
    Pipeline,
}

impl ViewMode {
    pub fn title(self) -> &'static str {
        match self {
            ViewMode::Overview => "overview",
            ViewMode::Symbol => "symbol",
            ViewMode::Alerts => "alerts",
            ViewMode::Pipeline => "pipeline",
        }
    }
}

/// A key press, reduced to what the dashboard tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Left,
    Right,
    Esc,
    CtrlC,
    Other,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Show(ViewMode),
    /// Move the selected symbol by this many places (wrapping).
    Cycle(isize),
}

/// The shortcut line every view shows at its foot.
pub const FOOTER: &str = "1 overview  2 symbol  3 alerts  4 pipeline  ←/→ or n/p symbol  q quit";

pub fn on_key(key: Key) -> Action {
    match key {
        Key::Char('q') | Key::Esc | Key::CtrlC => Action::Quit,
        Key::Char('1') => Action::Show(ViewMode::Overview),
        Key::Char('2') => Action::Show(ViewMode::Symbol),
        Key::Char('3') => Action::Show(ViewMode::Alerts),
        Key::Char('4') => Action::Show(ViewMode::Pipeline),
        Key::Right | Key::Char('n') => Action::Cycle(1),
        Key::Left | Key::Char('p') => Action::Cycle(-1),
        _ => Action::None,
    }
}

/// The view shown and the symbol selected (an index into the symbols the
/// data has so far; clamped when drawn since that list grows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub mode: ViewMode,
    pub symbol: usize,
}

impl Selection {
    /// Applies `action`; returns `true` to quit. Cycling a symbol from
    /// another view opens the symbol view, which is where it shows.
    pub fn apply(&mut self, action: Action, symbols: usize) -> bool {
        match action {
            Action::Quit => return true,
            Action::Show(mode) => self.mode = mode,
            Action::Cycle(by) if symbols > 0 => {
                let at = self.symbol.min(symbols - 1) as isize;
                self.symbol = (at + by).rem_euclid(symbols as isize) as usize;
                self.mode = ViewMode::Symbol;
            }
            Action::Cycle(_) | Action::None => {}
        }
        false
    }

    /// The selected symbol's index among `symbols`, if any.
    pub fn symbol_index(&self, symbols: usize) -> Option<usize> {
        (symbols > 0).then(|| self.symbol.min(symbols - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_switch_views_and_quit_keys_quit() {
        assert_eq!(on_key(Key::Char('2')), Action::Show(ViewMode::Symbol));
        assert_eq!(on_key(Key::Char('3')), Action::Show(ViewMode::Alerts));
        assert_eq!(on_key(Key::Char('4')), Action::Show(ViewMode::Pipeline));
        assert_eq!(on_key(Key::Char('1')), Action::Show(ViewMode::Overview));
        for k in [Key::Char('q'), Key::Esc, Key::CtrlC] {
            assert_eq!(on_key(k), Action::Quit);
        }
        assert_eq!(on_key(Key::Char('x')), Action::None);
        assert_eq!(on_key(Key::Other), Action::None);
    }

    #[test]
    fn arrows_cycle_symbols_with_wrap_around() {
        let mut s = Selection::default();
        assert!(!s.apply(on_key(Key::Right), 3));
        assert_eq!((s.mode, s.symbol), (ViewMode::Symbol, 1));
        s.apply(on_key(Key::Char('n')), 3);
        s.apply(on_key(Key::Right), 3);
        assert_eq!(s.symbol, 0, "wraps past the last symbol");
        s.apply(on_key(Key::Left), 3);
        assert_eq!(s.symbol, 2, "wraps before the first symbol");
        s.apply(on_key(Key::Char('p')), 3);
        assert_eq!(s.symbol, 1);
    }

    #[test]
    fn cycling_without_symbols_changes_nothing() {
        let mut s = Selection::default();
        s.apply(Action::Cycle(1), 0);
        assert_eq!(s, Selection::default());
        assert_eq!(s.symbol_index(0), None);
    }

    #[test]
    fn a_stale_index_is_clamped_to_the_symbols_there_are() {
        let s = Selection {
            mode: ViewMode::Symbol,
            symbol: 9,
        };
        assert_eq!(s.symbol_index(4), Some(3));
        let mut s = s;
        s.apply(Action::Cycle(1), 4);
        assert_eq!(s.symbol, 0);
    }

    #[test]
    fn quit_is_reported_by_apply() {
        assert!(Selection::default().apply(on_key(Key::Char('q')), 2));
    }
}
