//! One memory budget for everything that grows with a backlog.
//!
//! Catching up a backlog, three buffers grow with the input, not with the
//! query's state: the consumer's prefetch queues, the output of the open
//! epoch (kept until its transaction commits, and copied into the
//! checkpoint), and the producer's send queue. librdkafka's defaults alone
//! (1 GiB producer queue, 64 MiB prefetch per partition) exceed a 1 GiB pod.
//! [`MemoryBudget::split`] sizes all three from one figure, by default a
//! share of the container's memory limit, and the run loop closes an epoch
//! early once its pending output reaches its share.
//!
//! Pure except [`container_limit`], which reads the cgroup files.

use std::path::Path;

/// The worker's memory target: the buffers that grow with a backlog are
/// sized so that, at their peak, they and the process's own footprint stay
/// within it. (The query's state, which grows with keys and open windows,
/// not with the backlog, comes on top.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget(pub u64);

/// Without a container limit (a laptop, a test), the budget.
pub const DEFAULT_BUDGET: u64 = 512 << 20;
/// Share of the container limit the budget takes: the rest is the process
/// itself (code, allocator, DataFusion, the query's state).
const SHARE_OF_LIMIT_PERCENT: u64 = 50;
/// Smallest budget that holds the process itself plus useful buffers.
pub const MIN_BUDGET: u64 = 192 << 20;

/// What librdkafka holds per queued message besides its payload: the
/// producer's message struct, the consumer's op (measured with heaptrack:
/// 200-260 bytes). For small records it outweighs the payload, which is all
/// librdkafka's byte limits count, so the queues are bounded in messages
/// too.
pub const PER_MESSAGE_BYTES: u64 = 256;

/// Buffer sizes derived from a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    /// The open epoch closes once its pending output holds this much
    /// (counted exactly: `crate::sink::pending`).
    pub pending_output_bytes: u64,
    /// librdkafka `queue.buffering.max.kbytes` of the producer (payload).
    pub producer_queue_kbytes: u64,
    /// librdkafka `queue.buffering.max.messages`.
    pub producer_queue_messages: u64,
    /// librdkafka `queued.max.messages.kbytes`: the consumer's prefetch
    /// (payload).
    pub consumer_queue_kbytes: u64,
    /// librdkafka `queued.min.messages`. Per partition in name, but with the
    /// consumer-poll API every partition's fetch queue forwards into one
    /// queue, whose length librdkafka compares: a bound on all of them.
    pub consumer_queue_messages: u64,
    /// librdkafka `fetch.max.bytes` (and `max.partition.fetch.bytes`): one
    /// fetch response. The broker still returns a larger first batch whole.
    pub fetch_max_bytes: u64,
}

impl MemoryBudget {
    /// The budget for a process in a container limited to `limit` bytes
    /// (`None`: no limit known).
    pub fn for_limit(limit: Option<u64>) -> Self {
        match limit {
            Some(l) => {
                let share = (l as u128 * SHARE_OF_LIMIT_PERCENT as u128 / 100) as u64;
                Self(share.max(MIN_BUDGET))
            }
            None => Self(DEFAULT_BUDGET),
        }
    }

    /// Splits the budget. Pending output gets an eighth (it decides how
    /// often an epoch commits, which costs a few broker round trips), the
    /// producer's queue and the consumer's prefetch a sixteenth each (half
    /// in payload, half in per-message overhead); a fetch response is a
    /// sixteenth of a queue, because it arrives compressed.
    /// The rest is the process itself (about 60-80 MiB under load: code,
    /// DataFusion, the allocator, batches being decoded and evaluated) and
    /// the query's state. Measured in docs/benchmarks.md ("Memory under a
    /// backlog").
    pub fn split(self) -> BufferSizes {
        let b = self.0.max(MIN_BUDGET);
        let queue = b / 16;
        BufferSizes {
            pending_output_bytes: b / 8,
            producer_queue_kbytes: (queue / 2 / 1024).clamp(1024, i32::MAX as u64),
            producer_queue_messages: (queue / 2 / PER_MESSAGE_BYTES).clamp(1000, i32::MAX as u64),
            // librdkafka caps this at 2 GiB.
            consumer_queue_kbytes: (queue / 2 / 1024).clamp(1024, 2_097_151),
            consumer_queue_messages: (queue / 2 / PER_MESSAGE_BYTES).clamp(1000, 10_000_000),
            // Compressed: a response decompresses to several times its
            // size, and each of its records costs PER_MESSAGE_BYTES more.
            fetch_max_bytes: (queue / 16).clamp(64 << 10, 50 << 20),
        }
    }
}

/// Parses `512MiB`, `1GiB`, `300MB`, `64M` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 512MiB"))?;
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    let bytes = number * unit_bytes as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if it has one.
pub fn container_limit() -> Option<u64> {
    container_limit_under(Path::new("/sys/fs/cgroup"))
}

fn container_limit_under(root: &Path) -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let limit = read("memory.max")
        .or_else(|| read("memory/memory.limit_in_bytes"))?
        .trim()
        .parse::<u64>()
        .ok()?;
    // cgroup v1 reports "no limit" as a huge page-aligned number.
    (limit < (1 << 60)).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("300MB"), Ok(300_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn a_budget_is_half_the_container_limit_and_split_within_it() {
        let b = MemoryBudget::for_limit(Some(1 << 30));
        assert_eq!(b, MemoryBudget(512 << 20));
        assert_eq!(MemoryBudget::for_limit(None), MemoryBudget(DEFAULT_BUDGET));
        assert_eq!(
            MemoryBudget::for_limit(Some(1 << 20)),
            MemoryBudget(MIN_BUDGET)
        );
        let s = b.split();
        let queue = |kbytes: u64, messages: u64| kbytes * 1024 + messages * PER_MESSAGE_BYTES;
        let total = s.pending_output_bytes
            + queue(s.producer_queue_kbytes, s.producer_queue_messages)
            + queue(s.consumer_queue_kbytes, s.consumer_queue_messages)
            + s.fetch_max_bytes;
        // At most half the budget: the rest is the process itself.
        assert!(2 * total <= b.0, "{s:?} exceeds {b:?}");
        // librdkafka's own defaults: a 1 GiB producer queue, 64 MiB prefetch.
        assert!(s.producer_queue_kbytes * 1024 < 1 << 30);
    }

    #[test]
    fn cgroup_limits_are_read_and_unlimited_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(container_limit_under(dir.path()), None);
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(container_limit_under(dir.path()), None);
        std::fs::write(dir.path().join("memory.max"), "1073741824\n").unwrap();
        assert_eq!(container_limit_under(dir.path()), Some(1 << 30));
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("memory")).unwrap();
        std::fs::write(
            v1.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(container_limit_under(v1.path()), None);
    }
}
