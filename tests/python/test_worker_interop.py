"""The worker's Kafka messages, read by Confluent's own Python client.

`tickflow-worker produce` writes Avro in the Confluent wire format and
registers its schemas; confluent-kafka's SchemaRegistryClient and
AvroDeserializer must decode every message field for field to what the same
seed writes to JSON-lines files. The query's Avro output (schema derived from
the SQL) must decode too, to the rows of its JSON output.

Needs the worker binary (TICKFLOW_WORKER_BIN, else the shared cargo target
dir) and the broker of tests/kafka/kafka.sh.
"""

import datetime as dt
import json
import os
import pathlib
import subprocess
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from test_registry_server import RunningRegistry, kafka  # noqa: F401  (fixture)

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(
    os.environ.get(
        "TICKFLOW_WORKER_BIN",
        pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/tickflow/target"))
        / "release/tickflow-worker",
    )
)


@pytest.fixture(scope="module")
def registry():
    r = RunningRegistry()
    yield r
    r.stop()


def run_worker(*args):
    if not WORKER.exists():
        pytest.fail(f"worker binary {WORKER} not built: run cargo build --release first")
    p = subprocess.run([str(WORKER), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def consume_all(brokers, topic, isolation="read_committed"):
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"interop-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    md = c.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out, idle = [], 0
    while idle < 10:
        done = all(
            (tp.offset if tp.offset >= 0 else 0) >= ends[tp.partition]
            for tp in c.position([TopicPartition(topic, p) for p in parts])
        )
        if done:
            break
        m = c.poll(0.5)
        if m is None:
            idle += 1
            continue
        assert m.error() is None, m.error()
        idle = 0
        out.append(m)
    c.close()
    return out


def epoch_ms(v):
    if isinstance(v, dt.datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, str):
        return int(dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    return v


def normalise(row):
    return {k: (epoch_ms(v) if k in ("ts", "window_start", "window_end") else v) for k, v in row.items()}


def test_confluent_deserializer_reads_every_produced_record_field_for_field(kafka, registry, tmp_path):
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    topics = {t: f"{prefix}-{t}" for t in ("market-ticks", "order-events", "book-updates")}
    common = ["--seed", "21", "--count", "3000", "--jitter", "200ms"]
    summary = run_worker(
        "produce", "--brokers", kafka["KAFKA_BROKERS"], "--schema-registry", registry.url,
        "--ticks-topic", topics["market-ticks"], "--orders-topic", topics["order-events"],
        "--books-topic", topics["book-updates"], *common,
    )
    run_worker("produce", "--output-dir", tmp_path, *common)
    client = SchemaRegistryClient({"url": registry.url})
    for standard, topic in topics.items():
        # Registered under the topic-name strategy.
        latest = client.get_latest_version(f"{topic}-value")
        assert latest.schema.schema_type == "AVRO"
        ts_field = next(f for f in json.loads(latest.schema.schema_str)["fields"] if f["name"] == "ts")
        assert ts_field["type"] == {"type": "long", "logicalType": "timestamp-millis"}, ts_field
        deser = AvroDeserializer(client)
        got = {}
        msgs = consume_all(kafka["KAFKA_BROKERS"], topic)
        assert len(msgs) == summary["topics"][topic]
        for m in msgs:
            value = deser(m.value(), SerializationContext(topic, MessageField.VALUE))
            assert m.key().decode() == value["symbol"], "keyed by symbol"
            assert isinstance(value["ts"], dt.datetime), "ts is a timestamp-millis, read as a datetime"
            got.setdefault(value["symbol"], []).append(normalise(value))
        want = {}
        for line in (tmp_path / f"{standard}.jsonl").read_text().splitlines():
            row = json.loads(line)
            want.setdefault(row["symbol"], []).append(normalise(row))
        assert got.keys() == want.keys()
        for symbol in want:
            assert len(got[symbol]) == len(want[symbol]), f"{topic} {symbol}"
            for g, w in zip(got[symbol], want[symbol]):
                assert g.keys() == w.keys()
                for k in w:
                    if isinstance(w[k], float):
                        assert g[k] == pytest.approx(w[k], rel=1e-12), (topic, k)
                    else:
                        assert g[k] == w[k], (topic, symbol, k)


def test_query_avro_output_decodes_with_the_confluent_deserializer(kafka, registry, tmp_path):
    prefix = f"interop-q-{uuid.uuid4().hex[:8]}"
    ticks = f"{prefix}-ticks"
    run_worker(
        "produce", "--brokers", kafka["KAFKA_BROKERS"], "--schema-registry", registry.url,
        "--ticks-topic", ticks, "--orders-topic", f"{prefix}-o", "--books-topic", f"{prefix}-b",
        "--seed", "4", "--count", "20000",
    )
    outs = {}
    for fmt in ("avro", "json"):
        outs[fmt] = f"{prefix}-ohlc-{fmt}"
        run_worker(
            "query", "--sql", REPO / "sql/ohlc_5s.sql", "--brokers", kafka["KAFKA_BROKERS"],
            "--schema-registry", registry.url, "--input", f"market_ticks=kafka:{ticks}",
            "--output", f"ohlc_5s=kafka:{outs[fmt]}", "--output-format", fmt, "--bounded",
            "--name", f"{prefix}-{fmt}", "--checkpoint-dir", tmp_path / fmt,
        )
    client = SchemaRegistryClient({"url": registry.url})
    deser = AvroDeserializer(client)
    avro_rows = sorted(
        (normalise(deser(m.value(), SerializationContext(outs["avro"], MessageField.VALUE)))
         for m in consume_all(kafka["KAFKA_BROKERS"], outs["avro"])),
        key=lambda r: (r["symbol"], r["window_start"]),
    )
    json_rows = sorted(
        (normalise(json.loads(m.value())) for m in consume_all(kafka["KAFKA_BROKERS"], outs["json"])),
        key=lambda r: (r["symbol"], r["window_start"]),
    )
    assert len(avro_rows) > 0 and len(avro_rows) == len(json_rows)
    for a, j in zip(avro_rows, json_rows):
        assert a.keys() == j.keys()
        for k in j:
            if isinstance(j[k], float):
                assert a[k] == pytest.approx(j[k], rel=1e-12), k
            else:
                assert a[k] == j[k], k


QUIET_TRADERS_SQL = """CREATE STREAM quiet_traders AS
SELECT trader_id, symbol, COUNT(*) AS orders, SUM(quantity) AS quantity, MIN(price) AS low
FROM order_events WHERE side = 'buy' GROUP BY trader_id, symbol HAVING COUNT(*) < 25;
"""


def test_updating_stream_is_a_compacted_topic_of_upserts_and_tombstones(kafka, registry, tmp_path):
    """A GROUP BY without a window through Kafka: every change keyed by the
    GROUP BY columns, a key leaving the result (HAVING) as a tombstone, the
    topic compacted; replaying the topic gives the batch result."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    prefix = f"interop-u-{uuid.uuid4().hex[:8]}"
    orders = f"{prefix}-orders"
    common = ["--seed", "8", "--count", "20000", "--jitter", "300ms"]
    run_worker(
        "produce", "--brokers", kafka["KAFKA_BROKERS"], "--schema-registry", registry.url,
        "--ticks-topic", f"{prefix}-t", "--orders-topic", orders, "--books-topic", f"{prefix}-b",
        *common,
    )
    run_worker("produce", "--output-dir", tmp_path / "data", *common)
    sql = tmp_path / "quiet.sql"
    sql.write_text(QUIET_TRADERS_SQL)
    out = f"{prefix}-quiet"
    run_worker(
        "query", "--sql", sql, "--brokers", kafka["KAFKA_BROKERS"],
        "--schema-registry", registry.url, "--input", f"order_events=kafka:{orders}",
        "--output", f"quiet_traders=kafka:{out}", "--output-format", "json", "--bounded",
        "--name", prefix, "--checkpoint-dir", tmp_path / "chk",
        # Small batches: changes go out per batch, so groups are seen
        # below the limit before they pass it.
        "--batch-size", "100",
    )

    table, upserts, tombstones = {}, 0, 0
    for m in consume_all(kafka["KAFKA_BROKERS"], out):
        key = m.key().decode()
        if m.value() is None:
            assert key in table, f"tombstone for {key}, which was never upserted"
            del table[key]
            tombstones += 1
        else:
            row = json.loads(m.value())
            assert key == f"{row['trader_id']}|{row['symbol']}", "keyed by the GROUP BY columns"
            table[key] = row
            upserts += 1
    assert tombstones > 0, "some (trader, symbol) passed 25 buy orders"

    # The same aggregation over the same orders, in plain Python.
    groups = {}
    for line in (tmp_path / "data/order-events.jsonl").read_text().splitlines():
        o = json.loads(line)
        if o["side"] != "buy":
            continue
        g = groups.setdefault(f"{o['trader_id']}|{o['symbol']}", {"orders": 0, "quantity": 0, "low": None})
        g["orders"] += 1
        g["quantity"] += o["quantity"]
        if o["price"] is not None:
            g["low"] = o["price"] if g["low"] is None else min(g["low"], o["price"])
    want = {k: g for k, g in groups.items() if g["orders"] < 25}
    assert want, "the data leaves some groups below 25"
    assert table.keys() == want.keys()
    for key, w in want.items():
        got = table[key]
        assert (got["orders"], got["quantity"], got["low"]) == (w["orders"], w["quantity"], w["low"]), key

    admin = AdminClient({"bootstrap.servers": kafka["KAFKA_BROKERS"]})
    (config,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, out)]).values()
    assert config.result(timeout=10)["cleanup.policy"].value == "compact"
