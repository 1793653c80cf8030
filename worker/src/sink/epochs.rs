//! The restart decision every exactly-once sink makes: was the restored
//! checkpoint's epoch committed to the output, is it the one before (send
//! it again), or does the output belong to another history (refuse)?
//!
//! Each sink stores the epoch and the checkpoint directory's lineage with
//! its committed positions (Kafka: the offsets' metadata; PostgreSQL: the
//! `tickflow_offsets` table) and reads them back on start; the decision
//! itself is pure and shared (docs/exactly-once.md).

/// The epoch (and lineage) an output's positions were last committed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub epoch: u64,
    /// `None` for offsets committed by a worker that wrote no lineage.
    pub lineage: Option<String>,
}

impl Committed {
    pub fn describe(&self) -> String {
        match &self.lineage {
            Some(l) => format!("epoch {} of checkpoint lineage {l}", self.epoch),
            None => format!("epoch {}", self.epoch),
        }
    }
}

/// What a restart does about the restored epoch's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Its transaction committed (or nothing was restored): carry on.
    Continue,
    /// The checkpoint was written but its transaction never committed: send
    /// its records again and commit them.
    Resend,
}

/// The one decision of a restart (docs/exactly-once.md), from the restored
/// checkpoint's epoch (`None`: nothing restored), what the group last
/// committed, and this directory's lineage. Anything but "committed the
/// restored epoch or the one before it, from this directory" is refused:
///
/// - committed *ahead* of the restored epoch: that epoch's output is in
///   Kafka already and restoring the older state would write it again (a
///   second worker on the directory, or a newer checkpoint that did not read
///   back and whose epoch had committed);
/// - committed by another lineage: the directory is stale (a reverted
///   stateless revision, a copied volume) and the output has moved on;
/// - nothing restored while the group holds offsets of an epoch: the
///   checkpoints were lost (PVC lost, resource re-created under the same
///   name); starting would re-read from `--start-from`. Allowed with
///   `fresh_start_allowed` (`--start-fresh`), and for this directory's own
///   first start (epoch 0 of its lineage, nothing written yet).
pub fn recovery(
    restored: Option<u64>,
    committed: Option<&Committed>,
    lineage: &str,
    fresh_start_allowed: impl Into<FreshStart>,
) -> Result<Recovery, String> {
    let fresh = fresh_start_allowed.into();
    let ours = |c: &Committed| c.lineage.as_deref().is_none_or(|l| l == lineage);
    let Some(restored) = restored else {
        return match committed {
            None => Ok(Recovery::Continue),
            // Epoch 0 is the empty transaction of a start: nothing was written.
            Some(c) if c.epoch == 0 => Ok(Recovery::Continue),
            Some(_) if fresh == FreshStart::Always => Ok(Recovery::Continue),
            // A new stateless revision after the previous one's epochs; but
            // epochs of this very directory mean its checkpoints were lost.
            Some(c)
                if fresh == FreshStart::IfAnotherLineage
                    && c.lineage.as_deref() != Some(lineage) =>
            {
                Ok(Recovery::Continue)
            }
            Some(c) => Err(format!(
                "its offsets were committed by {}, but the checkpoint directory holds no \
                 checkpoint (a lost volume, or the query re-created under the same name). \
                 Starting here would read the input again from its start (for Kafka: \
                 --start-from) and write its output twice (or skip some). Restore the \
                 checkpoint directory, or start over on purpose with --start-fresh",
                c.describe()
            )),
        };
    };
    let Some(c) = committed else {
        return Err(format!(
            "it holds no committed offsets, so whether epoch {restored} of the restored \
             checkpoint was committed cannot be told (the offsets were deleted, or expired \
             after a Kafka broker's offsets.retention.minutes). Refusing rather than risk writing that \
             epoch twice or not at all; start over with --start-fresh"
        ));
    };
    if !ours(c) {
        return Err(format!(
            "its offsets were committed by {}, not by this checkpoint directory (lineage \
             {lineage}, restored epoch {restored}): the directory is stale (a reverted \
             stateless revision, or a copy) and the output has moved past it. Remove the \
             directory or start over with --start-fresh",
            c.describe()
        ));
    }
    match c.epoch {
        e if e == restored => Ok(Recovery::Continue),
        e if e + 1 == restored => Ok(Recovery::Resend),
        e if e > restored => Err(format!(
            "its offsets were committed by {}, after the restored checkpoint {restored}: that \
             output is in Kafka already and restoring the older state would write it again. \
             Either a newer checkpoint did not read back (see the warnings above; it was set \
             aside as chk-<id>.unreadable) or another worker wrote to this group. Restore the \
             newer checkpoint, or start over with --start-fresh",
            c.describe()
        )),
        _ => Err(format!(
            "its offsets were committed by {}, more than one epoch before the restored \
             checkpoint {restored}: the checkpoint does not belong to this group's history. \
             Start over with --start-fresh",
            c.describe()
        )),
    }
}

/// When a run that restored nothing may start although the group holds
/// committed offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshStart {
    /// Never: the checkpoints were lost.
    Never,
    /// When the offsets were committed by another checkpoint directory
    /// (`--start-fresh-if-no-checkpoint`: a stateless upgrade's new
    /// revision), never after this directory's own epochs.
    IfAnotherLineage,
    /// Always (`--start-fresh`).
    Always,
}

impl From<bool> for FreshStart {
    fn from(always: bool) -> Self {
        if always { Self::Always } else { Self::Never }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_accepts_only_the_restored_epoch_or_the_one_before_from_its_own_lineage() {
        let c = |epoch, lineage: Option<&str>| Committed {
            epoch,
            lineage: lineage.map(str::to_string),
        };
        let ours = Some("L");
        // The normal cases.
        assert_eq!(
            recovery(Some(5), Some(&c(5, ours)), "L", false),
            Ok(Recovery::Continue)
        );
        assert_eq!(
            recovery(Some(5), Some(&c(4, ours)), "L", false),
            Ok(Recovery::Resend)
        );
        assert_eq!(
            recovery(Some(5), Some(&c(4, None)), "L", false),
            Ok(Recovery::Resend)
        );
        assert_eq!(recovery(None, None, "L", false), Ok(Recovery::Continue));
        assert_eq!(
            recovery(None, Some(&c(0, Some("M"))), "L", false),
            Ok(Recovery::Continue)
        );
        // Committed ahead (a second worker, a newer checkpoint unreadable).
        let e = recovery(Some(5), Some(&c(6, ours)), "L", false).unwrap_err();
        assert!(e.contains("after the restored checkpoint 5"), "{e}");
        assert!(recovery(Some(5), Some(&c(6, ours)), "L", true).is_err());
        // Behind by more than one, another lineage, nothing committed.
        assert!(recovery(Some(5), Some(&c(3, ours)), "L", false).is_err());
        let e = recovery(Some(5), Some(&c(5, Some("M"))), "L", false).unwrap_err();
        assert!(e.contains("stale"), "{e}");
        assert!(recovery(Some(5), None, "L", false).is_err());
        // No checkpoint while the group holds an epoch: refused unless fresh.
        let e = recovery(None, Some(&c(9, Some("M"))), "L", false).unwrap_err();
        assert!(e.contains("--start-fresh"), "{e}");
        assert!(recovery(None, Some(&c(9, ours)), "L", false).is_err());
        assert_eq!(
            recovery(None, Some(&c(9, Some("M"))), "L", true),
            Ok(Recovery::Continue)
        );
        // A stateless revision starts over another directory's epochs, never
        // over its own: those mean its checkpoints were lost.
        let if_other = FreshStart::IfAnotherLineage;
        assert_eq!(
            recovery(None, Some(&c(9, Some("M"))), "L", if_other),
            Ok(Recovery::Continue)
        );
        assert_eq!(
            recovery(None, Some(&c(9, None)), "L", if_other),
            Ok(Recovery::Continue),
            "an untagged (older release's) epoch is another history"
        );
        assert!(recovery(None, Some(&c(9, ours)), "L", if_other).is_err());
    }
}
