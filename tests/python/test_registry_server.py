"""Checks tests/schema_registry/server.py against Confluent's own Python client
(confluent_kafka.schema_registry) and plain HTTP, and sends Avro records in the
Confluent wire format through the real Kafka broker of tests/kafka/kafka.sh
(PLAINTEXT and SASL/SCRAM listeners).

Run:  "$(tests/python/setup.sh)" -m pytest -q tests/python
The Kafka fixture starts the broker when it is not running (and stops it again
afterwards); nothing is skipped.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "schema_registry" / "server.py"
KAFKA_SH = ROOT / "tests" / "kafka" / "kafka.sh"
SCHEMAS = ROOT / "schemas"
CT = "application/vnd.schemaregistry.v1+json"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


class RunningRegistry:
    def __init__(self, basic_auth=None):
        env = dict(os.environ)
        env.pop("SCHEMA_REGISTRY_BASIC_AUTH", None)
        args = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0"]
        if basic_auth:
            args += ["--basic-auth", basic_auth]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"server.py did not print its URL: {line!r} {self.proc.stderr.read()}")
        self.url = line

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def registry():
    r = RunningRegistry()
    yield r
    r.stop()


@pytest.fixture
def client(registry):
    return SchemaRegistryClient({"url": registry.url})


@pytest.fixture(scope="module")
def shared_registry():
    r = RunningRegistry()
    yield r
    r.stop()


def kafka_env():
    out = subprocess.run([str(KAFKA_SH), "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@pytest.fixture(scope="session")
def kafka():
    """The broker of tests/kafka/kafka.sh; started here when it is not running."""
    running = subprocess.run([str(KAFKA_SH), "status"], capture_output=True, text=True).returncode == 0
    if not running:
        subprocess.run([str(KAFKA_SH), "start"], check=True)
    yield kafka_env()
    if not running:
        subprocess.run([str(KAFKA_SH), "stop"], check=True)


def avsc(name):
    return (SCHEMAS / name).read_text()


def record(fields, name="R", namespace="io.tickflow.test", **extra):
    return json.dumps({"type": "record", "name": name, "namespace": namespace, "fields": fields, **extra})


def post(url, body, **kw):
    return requests.post(url, data=json.dumps(body), headers={"Content-Type": CT}, timeout=10, **kw)


def subject():
    return f"s-{uuid.uuid4().hex[:8]}-value"


# --------------------------------------------------------------------------
# Confluent's SchemaRegistryClient against server.py
# --------------------------------------------------------------------------


def test_register_get_lookup_with_confluent_client(client):
    tick = Schema(avsc("market_tick.avsc"), "AVRO")
    sid = client.register_schema("market-ticks-value", tick)
    assert sid >= 1
    # Identical schema again (even re-formatted): same id, no new version.
    reformatted = Schema(json.dumps(json.loads(tick.schema_str), indent=4), "AVRO")
    assert SchemaRegistryClient({"url": client.config()["url"]}).register_schema("market-ticks-value", reformatted) == sid
    # Ids are global: the same schema under another subject keeps its id.
    assert client.register_schema("other-topic-value", tick) == sid
    order_id = client.register_schema("order-events-value", Schema(avsc("order_event.avsc"), "AVRO"))
    assert order_id != sid

    fetched = SchemaRegistryClient({"url": client.config()["url"]}).get_schema(sid)
    assert json.loads(fetched.schema_str) == json.loads(tick.schema_str)
    assert fetched.schema_type == "AVRO"

    latest = client.get_latest_version("market-ticks-value")
    assert (latest.schema_id, latest.subject, latest.version) == (sid, "market-ticks-value", 1)
    assert json.loads(latest.schema.schema_str) == json.loads(tick.schema_str)

    found = SchemaRegistryClient({"url": client.config()["url"]}).lookup_schema("other-topic-value", tick)
    assert (found.schema_id, found.subject, found.version) == (sid, "other-topic-value", 1)

    assert client.get_subjects() == ["market-ticks-value", "order-events-value", "other-topic-value"]
    assert client.get_versions("market-ticks-value") == [1]
    versions = client.get_schema_versions(sid)
    assert sorted((v.subject, v.version) for v in versions) == [("market-ticks-value", 1), ("other-topic-value", 1)]
    assert client.get_version("order-events-value", 1).schema_id == order_id


def test_lookup_errors(client):
    tick = Schema(avsc("market_tick.avsc"), "AVRO")
    with pytest.raises(SchemaRegistryError) as e:
        client.lookup_schema("missing-value", tick)
    assert (e.value.http_status_code, e.value.error_code) == (404, 40401)
    client.register_schema("ticks-value", tick)
    with pytest.raises(SchemaRegistryError) as e:
        client.lookup_schema("ticks-value", Schema(avsc("book_update.avsc"), "AVRO"))
    assert (e.value.http_status_code, e.value.error_code) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as e:
        client.get_schema(999)
    assert (e.value.http_status_code, e.value.error_code) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as e:
        client.get_version("ticks-value", 2)
    assert (e.value.http_status_code, e.value.error_code) == (404, 40402)


def test_compatibility_with_confluent_client(client):
    s = subject()
    v1 = [{"name": "symbol", "type": "string"}, {"name": "price", "type": "double"}]
    client.register_schema(s, Schema(record(v1), "AVRO"))
    assert client.get_compatibility() == "BACKWARD"

    with_default = Schema(record(v1 + [{"name": "venue", "type": "string", "default": "X"}]), "AVRO")
    without_default = Schema(record(v1 + [{"name": "venue", "type": "string"}]), "AVRO")
    assert client.test_compatibility(s, with_default) is True
    assert client.test_compatibility(s, without_default) is False
    assert client.test_compatibility(s, without_default, version=1) is False

    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema(s, without_default)
    assert e.value.http_status_code == 409
    assert e.value.error_code == 409
    assert e.value.error_message.startswith(
        f'Schema being registered is incompatible with an earlier schema for subject "{s}"'
    )
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in e.value.error_message

    v2 = client.register_schema(s, with_default)
    assert client.get_latest_version(s).version == 2
    assert client.get_latest_version(s).schema_id == v2

    # Subject-level override, then global.
    assert client.set_compatibility(s, "NONE") == {"compatibility": "NONE"}
    assert client.get_compatibility(s) == "NONE"
    assert client.test_compatibility(s, Schema(record([{"name": "x", "type": "int"}]), "AVRO")) is True
    client.set_compatibility(level="FULL")
    assert client.get_compatibility() == "FULL"

    with pytest.raises(SchemaRegistryError) as e:
        client.set_compatibility(level="SIDEWAYS")
    assert (e.value.http_status_code, e.value.error_code) == (422, 42203)


def test_invalid_schema_is_42201(client):
    for bad in (
        '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "strng"}]}',
        '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int", "default": "x"}]}',
        '{"type": "enum", "name": "E", "symbols": ["A", "A"]}',
        '{"type": "record", "name": "1R", "fields": []}',
        '["int", "int"]',
        "{not json",
    ):
        with pytest.raises(SchemaRegistryError) as e:
            client.register_schema(subject(), Schema(bad, "AVRO"))
        assert (e.value.http_status_code, e.value.error_code) == (422, 42201), bad


def test_delete_subject_and_version(client):
    s = subject()
    a = Schema(record([{"name": "a", "type": "int"}]), "AVRO")
    b = Schema(record([{"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 0}]), "AVRO")
    client.register_schema(s, a)
    client.register_schema(s, b)
    assert client.delete_version(s, 2) == 2
    assert client.get_versions(s) == [1]
    with pytest.raises(SchemaRegistryError) as e:
        client.delete_version(s, 2, permanent=False)
    assert e.value.error_code == 40406
    assert client.delete_version(s, 2, permanent=True) == 2
    assert client.delete_subject(s) == [1]
    assert s not in client.get_subjects()
    assert s in client.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as e:
        client.get_latest_version(s)
    assert e.value.error_code == 40401
    assert client.delete_subject(s, permanent=True) == [1]
    assert s not in client.get_subjects(deleted=True)


def test_basic_auth():
    r = RunningRegistry(basic_auth="sr-user:sr-secret")
    try:
        good = SchemaRegistryClient({"url": r.url, "basic.auth.user.info": "sr-user:sr-secret"})
        sid = good.register_schema("auth-value", Schema(avsc("book_update.avsc"), "AVRO"))
        assert good.get_schema(sid).schema_type == "AVRO"

        bad = SchemaRegistryClient({"url": r.url, "basic.auth.user.info": "sr-user:wrong"})
        with pytest.raises(SchemaRegistryError) as e:
            bad.get_subjects()
        assert (e.value.http_status_code, e.value.error_code) == (401, 401)

        resp = requests.get(f"{r.url}/subjects", timeout=10)
        assert resp.status_code == 401
        assert resp.json() == {"error_code": 401, "message": "Unauthorized"}
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        # Credentials in the URL are accepted as well (the client's own fallback).
        host = r.url.removeprefix("http://")
        assert requests.get(f"http://sr-user:sr-secret@{host}/subjects", timeout=10).json() == ["auth-value"]
    finally:
        r.stop()


# --------------------------------------------------------------------------
# REST details (paths, content types, error bodies)
# --------------------------------------------------------------------------


def test_rest_shapes_and_errors(registry):
    u = registry.url
    schema = avsc("order_event.avsc")
    r = post(f"{u}/subjects/orders-value/versions", {"schema": schema})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == CT
    assert r.json() == {"id": 1}
    # application/json is accepted too.
    r = requests.post(f"{u}/subjects/orders2-value/versions", json={"schema": schema}, timeout=10)
    assert r.json() == {"id": 1}

    got = requests.get(f"{u}/subjects/orders-value/versions/latest", timeout=10).json()
    assert set(got) == {"subject", "version", "id", "schema"}  # no schemaType for AVRO
    assert (got["subject"], got["version"], got["id"]) == ("orders-value", 1, 1)
    assert json.loads(got["schema"]) == json.loads(schema)
    assert requests.get(f"{u}/subjects/orders-value/versions/1", timeout=10).json() == got
    raw = requests.get(f"{u}/subjects/orders-value/versions/1/schema", timeout=10).json()
    assert raw == json.loads(schema)
    assert requests.get(f"{u}/schemas/ids/1", timeout=10).json() == {"schema": got["schema"]}
    assert requests.get(f"{u}/schemas/ids/1/versions", timeout=10).json() == [
        {"subject": "orders-value", "version": 1},
        {"subject": "orders2-value", "version": 1},
    ]
    assert requests.get(f"{u}/subjects", timeout=10).json() == ["orders-value", "orders2-value"]
    assert requests.get(f"{u}/subjects/orders-value/versions", timeout=10).json() == [1]

    looked = post(f"{u}/subjects/orders-value", {"schema": schema}).json()
    assert looked == got

    def err(resp):
        return resp.status_code, resp.json()["error_code"]

    assert err(requests.get(f"{u}/subjects/nope/versions", timeout=10)) == (404, 40401)
    assert err(requests.get(f"{u}/subjects/nope/versions/1", timeout=10)) == (404, 40401)
    assert err(requests.get(f"{u}/subjects/orders-value/versions/9", timeout=10)) == (404, 40402)
    assert err(requests.get(f"{u}/subjects/orders-value/versions/0", timeout=10)) == (422, 42202)
    assert err(requests.get(f"{u}/subjects/orders-value/versions/abc", timeout=10)) == (422, 42202)
    assert err(requests.get(f"{u}/schemas/ids/42", timeout=10)) == (404, 40403)
    assert err(post(f"{u}/subjects/nope", {"schema": schema})) == (404, 40401)
    assert err(post(f"{u}/subjects/orders-value", {"schema": avsc("book_update.avsc")})) == (404, 40403)
    assert err(post(f"{u}/subjects/x/versions", {"schema": "{"})) == (422, 42201)
    assert requests.get(f"{u}/nothing/here", timeout=10).status_code == 404

    assert requests.get(f"{u}/config", timeout=10).json() == {"compatibilityLevel": "BACKWARD"}
    r = requests.put(f"{u}/config/orders-value", json={"compatibility": "FORWARD"}, timeout=10)
    assert r.json() == {"compatibility": "FORWARD"}
    assert requests.get(f"{u}/config/orders-value", timeout=10).json() == {"compatibilityLevel": "FORWARD"}
    assert err(requests.get(f"{u}/config/orders2-value", timeout=10)) == (404, 40408)
    assert requests.get(f"{u}/config/orders2-value?defaultToGlobal=true", timeout=10).json() == {
        "compatibilityLevel": "BACKWARD"
    }

    # The id encoded in a wire-format message resolves to the writer schema.
    assert requests.get(f"{u}/schemas/types", timeout=10).json() == ["AVRO", "JSON", "PROTOBUF"]


def compat(u, s, old, new, level):
    """Registers `old` under a fresh subject with `level`, then tests `new`."""
    requests.put(f"{u}/config/{s}", json={"compatibility": level}, timeout=10).raise_for_status()
    assert post(f"{u}/subjects/{s}/versions", {"schema": json.dumps(old)}).status_code == 200
    r = post(f"{u}/compatibility/subjects/{s}/versions/latest", {"schema": json.dumps(new)})
    assert r.status_code == 200, r.text
    return r.json()["is_compatible"]


def rec(*fields, name="Rec"):
    return {"type": "record", "name": name, "namespace": "io.tickflow.test", "fields": list(fields)}


def f(name, type_, **kw):
    return {"name": name, "type": type_, **kw}


TS = {"type": "long", "logicalType": "timestamp-millis"}
SIDE = {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL"]}
SIDE3 = {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL", "SHORT"]}
SIDE3_DEFAULT = {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL", "SHORT"], "default": "BUY"}
LEVEL = rec(f("price", "double"), f("qty", "long"), name="Level")
LEVEL_INT = rec(f("price", "double"), f("qty", "int"), name="Level")

COMPAT_CASES = [
    # (old, new, level, expected)
    (rec(f("a", "int")), rec(f("a", "long")), "BACKWARD", True),
    (rec(f("a", "int")), rec(f("a", "double")), "BACKWARD", True),
    (rec(f("a", "long")), rec(f("a", "float")), "BACKWARD", True),
    (rec(f("a", "long")), rec(f("a", "int")), "BACKWARD", False),
    (rec(f("a", "int")), rec(f("a", "long")), "FORWARD", False),
    (rec(f("a", "int")), rec(f("a", "long")), "FULL", False),
    (rec(f("a", "string")), rec(f("a", "bytes")), "FULL", True),
    (rec(f("a", "string")), rec(f("a", "int")), "BACKWARD", False),
    (rec(f("a", "int")), rec(f("a", "int"), f("b", "string")), "BACKWARD", False),
    (rec(f("a", "int")), rec(f("a", "int"), f("b", "string", default="")), "FULL", True),
    (rec(f("a", "int"), f("b", "string")), rec(f("a", "int")), "BACKWARD", True),
    (rec(f("a", "int"), f("b", "string")), rec(f("a", "int")), "FORWARD", False),
    (rec(f("a", "int"), f("b", "string", default="")), rec(f("a", "int")), "FULL", True),
    (rec(f("a", "int")), rec(f("b", "string")), "NONE", True),
    (rec(f("ts", TS)), rec(f("ts", "long")), "FULL", True),
    (rec(f("ts", TS)), rec(f("ts", {"type": "long", "logicalType": "timestamp-micros"})), "FULL", True),
    (rec(f("s", SIDE)), rec(f("s", SIDE3)), "BACKWARD", True),
    (rec(f("s", SIDE)), rec(f("s", SIDE3)), "FORWARD", False),
    (rec(f("s", SIDE)), rec(f("s", SIDE3_DEFAULT)), "FULL", False),
    (rec(f("s", SIDE3_DEFAULT)), rec(f("s", SIDE)), "BACKWARD", False),
    (rec(f("s", SIDE3_DEFAULT)), rec(f("s", SIDE3_DEFAULT | {"symbols": ["BUY", "SELL"]})), "BACKWARD", True),
    (rec(f("s", SIDE3)), rec(f("s", SIDE | {"default": "BUY"})), "BACKWARD", True),
    (rec(f("p", "double")), rec(f("p", ["null", "double"], default=None)), "BACKWARD", True),
    (rec(f("p", "double")), rec(f("p", ["null", "double"], default=None)), "FORWARD", False),
    (rec(f("p", ["null", "int"])), rec(f("p", ["null", "long"])), "BACKWARD", True),
    (rec(f("p", ["null", "int", "string"])), rec(f("p", ["null", "long"])), "BACKWARD", False),
    (rec(f("p", "int")), rec(f("p", ["null", "string"])), "BACKWARD", False),
    (rec(f("xs", {"type": "array", "items": "int"})), rec(f("xs", {"type": "array", "items": "long"})), "BACKWARD", True),
    (rec(f("xs", {"type": "array", "items": "long"})), rec(f("xs", {"type": "array", "items": "int"})), "BACKWARD", False),
    (rec(f("m", {"type": "map", "values": "float"})), rec(f("m", {"type": "map", "values": "double"})), "BACKWARD", True),
    (rec(f("m", {"type": "map", "values": "string"})), rec(f("m", {"type": "array", "items": "string"})), "BACKWARD", False),
    (rec(f("best", LEVEL_INT)), rec(f("best", LEVEL)), "BACKWARD", True),
    (rec(f("best", LEVEL)), rec(f("best", LEVEL_INT)), "BACKWARD", False),
    (rec(f("best", LEVEL)), rec(f("best", rec(f("price", "double"), name="Level"))), "BACKWARD", True),
    (rec(f("best", LEVEL)), rec(f("best", rec(f("price", "double"), f("qty", "long"), name="Other"))), "BACKWARD", False),
    (rec(f("a", "int"), name="One"), rec(f("a", "int"), name="Two"), "BACKWARD", False),
    (rec(f("a", "int"), name="One"), {**rec(f("a", "int"), name="Two"), "aliases": ["io.tickflow.test.One"]}, "BACKWARD", True),
    (rec(f("a", "int")), rec(f("b", "int", aliases=["a"])), "BACKWARD", True),
    (rec(f("fx", {"type": "fixed", "name": "F", "size": 4})), rec(f("fx", {"type": "fixed", "name": "F", "size": 8})), "BACKWARD", False),
]


@pytest.mark.parametrize("old,new,level,expected", COMPAT_CASES)
def test_avro_compatibility_rules(shared_registry, old, new, level, expected):
    assert compat(shared_registry.url, subject(), old, new, level) is expected


def test_transitive_levels(registry):
    u = registry.url
    s = subject()
    # v1 -> v2 drops b (backward ok), v3 adds b back without a default:
    # compatible with v2 but not with v1 under FORWARD... check BACKWARD:
    v1 = rec(f("a", "int"))
    v2 = rec(f("a", "int"), f("b", "string", default=""))
    v3 = rec(f("a", "int"), f("b", "string"))
    requests.put(f"{u}/config/{s}", json={"compatibility": "BACKWARD"}, timeout=10)
    post(f"{u}/subjects/{s}/versions", {"schema": json.dumps(v1)}).raise_for_status()
    post(f"{u}/subjects/{s}/versions", {"schema": json.dumps(v2)}).raise_for_status()
    # v3 reads v2 data (b present) but not v1 data (b missing, no default).
    assert post(f"{u}/compatibility/subjects/{s}/versions/latest", {"schema": json.dumps(v3)}).json() == {
        "is_compatible": True
    }
    assert post(f"{u}/compatibility/subjects/{s}/versions/1", {"schema": json.dumps(v3)}).json() == {
        "is_compatible": False
    }
    requests.put(f"{u}/config/{s}", json={"compatibility": "BACKWARD_TRANSITIVE"}, timeout=10)
    r = post(f"{u}/subjects/{s}/versions", {"schema": json.dumps(v3)})
    assert (r.status_code, r.json()["error_code"]) == (409, 409)
    requests.put(f"{u}/config/{s}", json={"compatibility": "BACKWARD"}, timeout=10)
    assert post(f"{u}/subjects/{s}/versions", {"schema": json.dumps(v3)}).json()["id"] == 3


def test_repo_schemas_are_valid_avro(registry):
    for name in ("market_tick.avsc", "order_event.avsc", "book_update.avsc"):
        r = post(f"{registry.url}/subjects/{name}-value/versions", {"schema": avsc(name)})
        assert r.status_code == 200, r.text


# --------------------------------------------------------------------------
# Through the real broker
# --------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 5, 14, 30, 0, 123000, tzinfo=dt.timezone.utc)
SAMPLES = {
    "market_tick.avsc": {
        "symbol": "AAPL", "exchange": "NASDAQ", "price": 187.25, "bid": 187.24, "ask": 187.26,
        "bid_size": 300, "ask_size": 200, "volume": 100, "side": "buy", "ts": NOW,
    },
    "order_event.avsc": {
        "order_id": "o-1", "client_order_id": "c-1", "trader_id": "t-7", "symbol": "MSFT", "side": "sell",
        "order_type": "market", "quantity": 50, "price": None, "status": "new", "filled_quantity": 0, "ts": NOW,
    },
    "book_update.avsc": {
        "symbol": "NVDA", "side": "bid", "price": 120.5, "quantity": 1000, "level": 0, "action": "add", "ts": NOW,
    },
}


def create_topic(brokers, topic, partitions=1):
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(30)


def roundtrip(common_conf, registry_url, schema_name, topic):
    """Produce one Avro record with AvroSerializer, consume it with
    AvroDeserializer; returns (raw value bytes, decoded record)."""
    sr = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(sr, avsc(schema_name))
    ctx = SerializationContext(topic, MessageField.VALUE)
    value = serializer(SAMPLES[schema_name], ctx)

    errors = []
    producer = Producer({**common_conf, "enable.idempotence": True, "error_cb": errors.append})
    delivered = []
    producer.produce(topic, key=SAMPLES[schema_name]["symbol"].encode(), value=value,
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(30) == 0, errors
    assert delivered and delivered[0][0] is None, delivered

    consumer = Consumer({
        **common_conf,
        "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
            assert msg is None or msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
            msg = None
        assert msg is not None, "no message consumed within 30 s"
        deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
        decoded = deserializer(msg.value(), ctx)
        assert msg.key() == SAMPLES[schema_name]["symbol"].encode()
        return msg.value(), decoded
    finally:
        consumer.close()


@pytest.mark.parametrize("schema_name", sorted(SAMPLES))
def test_avro_through_kafka_plaintext(kafka, registry, schema_name):
    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topic(kafka["KAFKA_BROKERS"], topic)
    raw, decoded = roundtrip({"bootstrap.servers": kafka["KAFKA_BROKERS"]}, registry.url, schema_name, topic)
    # Confluent wire format: magic 0, 4-byte big-endian schema id, Avro body.
    assert raw[0] == 0
    schema_id = struct.unpack(">I", raw[1:5])[0]
    latest = requests.get(f"{registry.url}/subjects/{topic}-value/versions/latest", timeout=10).json()
    assert latest["id"] == schema_id
    assert decoded == SAMPLES[schema_name]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_avro_through_kafka_scram(kafka, registry, mechanism):
    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topic(kafka["KAFKA_BROKERS"], topic)
    conf = {
        "bootstrap.servers": kafka["KAFKA_SASL_BROKERS"],
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": kafka["TICKFLOW_TEST_SASL_USER"],
        "sasl.password": kafka["TICKFLOW_TEST_SASL_PASSWORD"],
    }
    _, decoded = roundtrip(conf, registry.url, "market_tick.avsc", topic)
    assert decoded == SAMPLES["market_tick.avsc"]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_wrong_password_fails_clearly(kafka, mechanism):
    errors = []
    admin = AdminClient({
        "bootstrap.servers": kafka["KAFKA_SASL_BROKERS"],
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": kafka["TICKFLOW_TEST_SASL_USER"],
        "sasl.password": "not-the-password",
        "error_cb": errors.append,
        "log_level": 0,
    })
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        admin.poll(0.1)
    assert errors, "no error reported for a wrong SCRAM password"
    err = errors[0]
    assert err.code() == KafkaError._AUTHENTICATION, err
    assert "invalid credentials" in err.str().lower(), err.str()
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=1)


def test_transactions_on_single_broker(kafka):
    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topic(kafka["KAFKA_BROKERS"], topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka["KAFKA_BROKERS"], "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"a", value=b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"a", value=b"committed")
    producer.commit_transaction(30)

    consumer = Consumer({
        "bootstrap.servers": kafka["KAFKA_BROKERS"],
        "group.id": f"g-{topic}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    try:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not got:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert got == [b"committed"]
    finally:
        consumer.close()


def test_basic_auth_header_is_plain_base64():
    # Guards the server's parsing of the Authorization header (RFC 7617).
    r = RunningRegistry(basic_auth="u:p:with:colons")
    try:
        token = base64.b64encode(b"u:p:with:colons").decode()
        ok = requests.get(f"{r.url}/subjects", headers={"Authorization": f"Basic {token}"}, timeout=10)
        assert ok.status_code == 200 and ok.json() == []
        bad = requests.get(f"{r.url}/subjects", headers={"Authorization": "Basic !!!"}, timeout=10)
        assert bad.status_code == 401
    finally:
        r.stop()


def test_references_and_recursive_types(client):
    from confluent_kafka.schema_registry import SchemaReference

    level = json.dumps(LEVEL)
    client.register_schema("level", Schema(level, "AVRO"))
    book = record([f("bid", "io.tickflow.test.Level"), f("ask", "io.tickflow.test.Level")], name="Book")
    refs = [SchemaReference("io.tickflow.test.Level", "level", 1)]
    sid = client.register_schema("book-value", Schema(book, "AVRO", refs))
    got = client.get_latest_version("book-value")
    assert got.schema_id == sid
    assert [(r.name, r.subject, r.version) for r in got.schema.references] == [("io.tickflow.test.Level", "level", 1)]
    # Without the reference the named type is unknown.
    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema("book2-value", Schema(book, "AVRO"))
    assert e.value.error_code == 42201

    node = {"type": "record", "name": "Node", "fields": [f("v", "int"), f("next", ["null", "Node"], default=None)]}
    node_long = {"type": "record", "name": "Node", "fields": [f("v", "long"), f("next", ["null", "Node"], default=None)]}
    s = subject()
    client.register_schema(s, Schema(json.dumps(node), "AVRO"))
    assert client.test_compatibility(s, Schema(json.dumps(node_long), "AVRO")) is True
    client.register_schema(s, Schema(json.dumps(node_long), "AVRO"))
    assert client.test_compatibility(s, Schema(json.dumps(node), "AVRO")) is False
