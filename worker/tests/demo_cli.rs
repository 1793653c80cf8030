//! `tickflow-worker demo` as a user runs it: a second run with the same
//! `--checkpoint-dir` resumes where the first stopped.

use std::path::Path;
use std::process::{Command, Output};

fn demo(dir: &Path, seed: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tickflow-worker"))
        .args([
            "demo",
            "--plain",
            "--duration",
            "3s",
            "--speed",
            "20",
            "--refresh",
            "1h",
            "--checkpoint-interval",
            "300ms",
            "--seed",
            seed,
        ])
        .arg("--checkpoint-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "demo failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The event time the final view shows (` event time: 2026-…Z`).
fn final_event_time(stdout: &str) -> chrono::DateTime<chrono::Utc> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("event time: "))
        .unwrap_or_else(|| panic!("no event time in the demo's output:\n{stdout}"));
    line.parse().unwrap()
}

fn newest_checkpoint(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("chk-")?.parse().ok()
        })
        .max()
        .expect("the demo wrote checkpoints")
}

#[test]
fn a_second_demo_run_resumes_from_the_first_runs_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, first_log) = ok(&demo(tmp.path(), "7"));
    assert!(
        !first_log.contains("restoring checkpoint"),
        "an empty directory restores nothing: {first_log}"
    );
    let stopped_at = final_event_time(&first);
    let last = newest_checkpoint(tmp.path());

    let (second, second_log) = ok(&demo(tmp.path(), "7"));
    assert!(
        second_log.contains(&format!("restoring checkpoint id={last}")),
        "the second run restores the first run's newest checkpoint ({last}): {second_log}"
    );
    // 3 s at 20x is a minute of event time per run: a resumed run ends about
    // a minute after the first, a run started over would end where it did.
    let resumed_to = final_event_time(&second);
    assert!(
        resumed_to - stopped_at >= chrono::Duration::seconds(30),
        "event time continues: first run ended at {stopped_at}, second at {resumed_to}"
    );
    assert!(newest_checkpoint(tmp.path()) > last);

    let other_seed = demo(tmp.path(), "8");
    let err = String::from_utf8_lossy(&other_seed.stderr);
    assert!(
        !other_seed.status.success() && err.contains("seed"),
        "another seed cannot resume this market: {err}"
    );
}
