//! The demo's terminal dashboard as a user drives it: `tickflow-worker demo`
//! runs in a real pseudo-terminal (a private tmux server), the test presses
//! the view keys and reads the screen text back after each. Needs `tmux`
//! on the PATH; without it the test says so and passes (nothing to drive).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long any one screen may take to appear (a cold, loaded machine).
const GUARD: Duration = Duration::from_secs(60);

/// A detached tmux server of its own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts the demo in a 160x50 pane; its exit status goes to a file.
    fn start_demo() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = format!("tickflow-demo-tui-{}", std::process::id());
        let bin = env!("CARGO_BIN_EXE_tickflow-worker");
        let script = format!(
            "'{bin}' demo --speed 20 --seed 7 2>'{err}'; echo $? >'{rc}'",
            err = dir.path().join("stderr").display(),
            rc = dir.path().join("rc").display(),
        );
        let tmux = Tmux { socket, dir };
        tmux.run(&["new-session", "-d", "-x", "160", "-y", "50", &script]);
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        out
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).to_string()
    }

    fn press(&self, key: &str) {
        self.run(&["send-keys", key]);
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Polls the screen until `ok` holds; fails with the last screen and
    /// the demo's log after [`GUARD`].
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if start.elapsed() > GUARD {
                let log = std::fs::read_to_string(self.file("stderr")).unwrap_or_default();
                panic!("no {what} after {GUARD:?}; screen:\n{screen}\nlog:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The demo's exit status, once it has exited.
    fn exit_status(&self) -> String {
        let rc = self.file("rc");
        let start = Instant::now();
        while !rc.exists() || std::fs::read_to_string(&rc).unwrap().trim().is_empty() {
            assert!(start.elapsed() < GUARD, "the demo did not exit after q");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::read_to_string(rc).unwrap().trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn tmux_installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

const FOOTER: &str = "1 overview  2 symbol  3 alerts  4 pipeline  ←/→ or n/p symbol  q quit";

/// The symbol view's title: (symbol, its place "i/n").
fn symbol_title(screen: &str) -> Option<(String, String)> {
    let rest = screen.split(" Symbol ").nth(1)?;
    let (symbol, rest) = rest.split_once(" (")?;
    let (place, _) = rest.split_once(')')?;
    Some((symbol.to_string(), place.to_string()))
}

fn shows_view(screen: &str, view: &str) -> bool {
    screen.contains(&format!("[{view}]")) && screen.contains(FOOTER)
}

#[test]
fn the_dashboard_switches_views_by_key_and_quits_on_q() {
    // Failing, not skipping: a test that cannot run checks nothing
    // (tests/run.sh installs tmux).
    assert!(
        tmux_installed(),
        "tmux is not installed: the dashboard needs a terminal to drive (apt-get install tmux)"
    );
    let t = Tmux::start_demo();
    t.wait_for("overview with bars", |s| {
        shows_view(s, "overview") && s.contains("tickflow demo — overview") && s.contains("AAPL")
    });

    t.press("2");
    let screen = t.wait_for("symbol view", |s| {
        shows_view(s, "symbol") && symbol_title(s).is_some()
    });
    let (first, place) = symbol_title(&screen).unwrap();
    assert!(
        place.starts_with("1/"),
        "the first symbol is selected: {screen}"
    );
    assert!(screen.contains("5s bars") && screen.contains(&format!("Alerts for {first}")));

    t.press("Right");
    let screen = t.wait_for("the next symbol", |s| {
        symbol_title(s).is_some_and(|(sym, place)| sym != first && place.starts_with("2/"))
    });
    let (second, _) = symbol_title(&screen).unwrap();
    let bar_rows = screen
        .lines()
        .filter(|l| l.contains(&format!("│{second} ")))
        .count();
    assert!(bar_rows > 0, "{second}'s own bars are listed: {screen}");

    t.press("Left");
    t.wait_for("the first symbol again", |s| {
        symbol_title(s).is_some_and(|(sym, _)| sym == first)
    });

    t.press("3");
    t.wait_for("alerts view", |s| {
        shows_view(s, "alerts") && s.contains("All alerts") && s.contains("large trades")
    });

    t.press("4");
    t.wait_for("pipeline view", |s| {
        shows_view(s, "pipeline")
            && [
                "Pipeline",
                "dead letters",
                "Sources",
                "market_ticks",
                "rows in",
                "watermark",
            ]
            .iter()
            .all(|w| s.contains(w))
    });

    t.press("1");
    t.wait_for("overview again", |s| {
        shows_view(s, "overview") && s.contains("OHLC 5s")
    });

    t.press("q");
    assert_eq!(t.exit_status(), "0", "q exits cleanly");
}
