//! Fault injection for the exactly-once and failover tests, compiled in only
//! with the `fault-injection` feature (tests/run.sh enables it; release
//! images do not have it).
//!
//! - `TICKFLOW_CRASH_AT=POINT:N` aborts the process (like `kill -9`) at
//!   POINT (`before-checkpoint`, `after-checkpoint`, `after-commit`) of this
//!   process's N-th checkpoint, so the dangerous moments are hit
//!   deterministically; `postgres-before-commit` is inside the PostgreSQL
//!   sink's N-th commit transaction, after its rows, before COMMIT.
//! - `TICKFLOW_STALL_AT=POINT:N` makes the commit of the N-th checkpoint
//!   misbehave, once: `commit` hangs before it reaches the broker,
//!   `after-commit` hangs once it is done, `commit-timeout` makes its
//!   commit call time out (given no time, it usually does; when librdkafka
//!   answers within that instant anyway, the next commit tries again).

/// A fault a sink's commit should act out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedStall {
    /// Hang before the commit, like librdkafka stuck in send_offsets.
    BeforeCommit,
    /// Commit, then hang: the commit landed but the worker never hears of it.
    AfterCommit,
    /// The commit call times out once (it is given no time), as when the
    /// broker is slow to answer: the retry must resume it.
    CommitTimesOut,
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::sync::Mutex;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::InjectedStall;

    fn spec(var: &str) -> Option<(String, u64)> {
        let v = std::env::var(var).ok()?;
        let (p, n) = v.split_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    }

    pub fn crash_point(point: &str, nth: u64) {
        static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
        if let Some((p, n)) = SPEC.get_or_init(|| spec("TICKFLOW_CRASH_AT"))
            && p == point
            && *n == nth
        {
            eprintln!("TICKFLOW_CRASH_AT: aborting at {point} of checkpoint {nth}");
            std::process::abort();
        }
    }

    static ARMED: Mutex<Option<InjectedStall>> = Mutex::new(None);

    pub fn arm_stall(nth: u64) {
        static FIRED: AtomicBool = AtomicBool::new(false);
        let Some((point, n)) = spec("TICKFLOW_STALL_AT") else {
            return;
        };
        let stall = match point.as_str() {
            "commit" => InjectedStall::BeforeCommit,
            "after-commit" => InjectedStall::AfterCommit,
            "commit-timeout" => InjectedStall::CommitTimesOut,
            _ => return,
        };
        if n == nth && !FIRED.swap(true, Ordering::Relaxed) {
            *ARMED.lock().expect("not poisoned") = Some(stall);
        }
    }

    pub fn take_stall() -> Option<InjectedStall> {
        ARMED.lock().expect("not poisoned").take()
    }

    pub fn arm_again(stall: InjectedStall) {
        *ARMED.lock().expect("not poisoned") = Some(stall);
    }
}

#[cfg(feature = "fault-injection")]
pub use enabled::{arm_again, arm_stall, crash_point, take_stall};

/// Aborts the process here if `TICKFLOW_CRASH_AT` names this point.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: &str, _nth: u64) {}

/// Arms the stall `TICKFLOW_STALL_AT` names for the commit of checkpoint `nth`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn arm_stall(_nth: u64) {}

/// The stall armed for the commit under way, if any (once).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn take_stall() -> Option<InjectedStall> {
    None
}

/// Arms `stall` for the next commit, when it did not take effect on this one.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn arm_again(_stall: InjectedStall) {}
