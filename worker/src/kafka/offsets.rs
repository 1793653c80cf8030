//! Kafka positions as the Kafka source reports them and the Kafka sink
//! commits them: topic-partition → next offset, and their checkpoint JSON
//! (`{"topic/partition": offset}`).

use std::collections::BTreeMap;

use anyhow::Context;

/// A topic and one of its partitions.
pub type TopicPartition = (String, i32);

/// Next offset to read per partition.
pub type Offsets = BTreeMap<TopicPartition, i64>;

pub fn offsets_to_json(p: &Offsets) -> serde_json::Value {
    serde_json::Value::Object(
        p.iter()
            .map(|((t, part), o)| (format!("{t}/{part}"), serde_json::json!(o)))
            .collect(),
    )
}

pub fn offsets_from_json(v: &serde_json::Value) -> anyhow::Result<Offsets> {
    let obj = v
        .as_object()
        .context("checkpointed Kafka positions are not an object")?;
    let mut out = BTreeMap::new();
    for (k, o) in obj {
        let (t, p) = k
            .rsplit_once('/')
            .context("position key is not topic/partition")?;
        out.insert(
            (t.to_string(), p.parse().context("partition number")?),
            o.as_i64().context("offset is not an integer")?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_with_slashes_in_topic_names() {
        let p = BTreeMap::from([(("a/b".to_string(), 3), 42i64), (("t".to_string(), 0), 0)]);
        assert_eq!(offsets_from_json(&offsets_to_json(&p)).unwrap(), p);
    }
}
