#!/usr/bin/env python3
"""A small in-memory schema registry that follows the Confluent Schema Registry
REST API (paths, content types, response bodies, error codes) for tests.

Python standard library only. Avro schemas are parsed and validated and the
compatibility levels BACKWARD (default), FORWARD, FULL, their _TRANSITIVE forms
and NONE are enforced with Avro's reader/writer schema-resolution rules. JSON
and PROTOBUF schemas are stored as given (no compatibility checks).

Usage:
    python3 tests/schema_registry/server.py [--host 127.0.0.1] [--port 8081]
                                            [--basic-auth user:password]
                                            [--tls-cert FILE --tls-key FILE]
                                            [--test-faults]

--port 0 picks a free port. The first line on stdout is always the URL the
server listens on, e.g. `http://127.0.0.1:8081`. --basic-auth (or the
SCHEMA_REGISTRY_BASIC_AUTH environment variable) makes every request need that
HTTP basic-auth user:password; others get 401. --tls-cert/--tls-key (PEM)
serve HTTPS instead (the printed URL is then https://...).

--test-faults (tests only; never on by default, not part of the Confluent
API) adds two endpoints so a test can make this registry misbehave:
    PUT /__test__/faults  body: a JSON list of faults, each
        {"path": "/schemas/ids/", "count": 3, "status": 401,
         "error_code": 401, "retry_after": 1, "delay": 0.5}
        The next `count` requests whose path starts with `path` get `status`
        (with {"error_code", "message"} and Retry-After when given) after
        sleeping `delay` seconds (a delay without a status, then the normal
        answer: a slow registry). Faults are used up in list order.
    DELETE /__test__/faults  clears them.
    GET /__test__/requests  {"path": count} of every other request so far.
These two need no credentials.

Endpoints: GET / ; GET /schemas/types ; GET /schemas/ids/{id}[/schema|/versions|/subjects] ;
GET /subjects ; GET|POST|DELETE /subjects/{s} ; GET|POST /subjects/{s}/versions ;
GET|DELETE /subjects/{s}/versions/{v|latest} ; GET /subjects/{s}/versions/{v}/schema ;
GET /subjects/{s}/versions/{v}/referencedby ; GET|PUT /config ; GET|PUT|DELETE /config/{s} ;
POST /compatibility/subjects/{s}/versions[/{v|latest}] ; GET|PUT /mode[/{s}].
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_BODY_TYPES = {
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
}
LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
SCHEMA_TYPES = ("AVRO", "JSON", "PROTOBUF")
MAX_VERSION = 2**31 - 1


class ApiError(Exception):
    """An error answered as {"error_code": code, "message": message}."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject):
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(version):
    return ApiError(404, 40402, f"Version {version} not found.")


def schema_not_found(schema_id=None):
    if schema_id is None:
        return ApiError(404, 40403, "Schema not found")
    return ApiError(404, 40403, f"Schema {schema_id} not found")


def invalid_schema(detail):
    return ApiError(422, 42201, f"Invalid schema: {detail}")


def invalid_version(version):
    return ApiError(
        422,
        42202,
        f"The specified version '{version}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def invalid_level():
    return ApiError(
        422,
        42203,
        "Invalid compatibility level. Valid values are none, backward, forward, full, "
        "backward_transitive, forward_transitive, and full_transitive",
    )


# --------------------------------------------------------------------------
# Avro schemas: parsing and validation
# --------------------------------------------------------------------------

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AvroError(Exception):
    pass


class Avro:
    """A parsed Avro type. kind is a primitive name or record, enum, fixed,
    array, map, union."""

    def __init__(self, kind, **attrs):
        self.kind = kind
        self.fullname = None
        self.name = None
        self.aliases = ()
        self.fields = ()
        self.symbols = ()
        self.enum_default = None
        self.size = None
        self.items = None
        self.values = None
        self.branches = ()
        self.logical = None
        for k, v in attrs.items():
            setattr(self, k, v)

    @property
    def named(self):
        return self.kind in ("record", "error", "enum", "fixed")

    def describe(self):
        return self.fullname if self.named else self.kind


class Field:
    def __init__(self, name, type_, has_default, default, aliases, position):
        self.name = name
        self.type = type_
        self.has_default = has_default
        self.default = default
        self.aliases = aliases
        self.position = position


def _check_name(name, what):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AvroError(f"Illegal name for {what}: {json.dumps(name)}")


def _split_fullname(name, namespace):
    """Resolve (name, namespace) as the Avro spec does -> (fullname, simple, ns)."""
    if not isinstance(name, str) or not name:
        raise AvroError(f"No name in schema: {json.dumps(name)}")
    if "." in name:
        ns, _, simple = name.rpartition(".")
    else:
        ns, simple = (namespace or ""), name
    _check_name(simple, "type")
    if ns:
        for part in ns.split("."):
            _check_name(part, "namespace")
    return (f"{ns}.{simple}" if ns else simple), simple, ns


class AvroParser:
    """Parses Avro schema JSON into Avro objects, following the Java parser's
    rules (name validation, default validation, no redefinitions)."""

    def __init__(self, known=None):
        self.names = dict(known or {})

    def parse(self, obj, namespace=""):
        if isinstance(obj, str):
            return self._named_ref(obj, namespace)
        if isinstance(obj, list):
            return self._union(obj, namespace)
        if not isinstance(obj, dict):
            raise AvroError(f"Not a valid schema: {json.dumps(obj)}")
        if "type" not in obj:
            raise AvroError(f"No type: {json.dumps(obj)}")
        t = obj["type"]
        if isinstance(t, (list, dict)):
            # {"type": {...}} or {"type": [...]}: a wrapped schema.
            return self.parse(t, namespace)
        if not isinstance(t, str):
            raise AvroError(f"Type not a string: {json.dumps(t)}")
        logical = obj.get("logicalType") if isinstance(obj.get("logicalType"), str) else None
        if t in PRIMITIVES:
            return Avro(t, logical=logical)
        if t in ("record", "error"):
            return self._record(obj, namespace, t)
        if t == "enum":
            return self._enum(obj, namespace)
        if t == "fixed":
            return self._fixed(obj, namespace, logical)
        if t == "array":
            if "items" not in obj:
                raise AvroError("Array has no items type")
            return Avro("array", items=self.parse(obj["items"], namespace))
        if t == "map":
            if "values" not in obj:
                raise AvroError("Map has no values type")
            return Avro("map", values=self.parse(obj["values"], namespace))
        # {"type": "SomeNamedType"}
        return self._named_ref(t, namespace)

    def _named_ref(self, name, namespace):
        if name in PRIMITIVES:
            return Avro(name)
        if "." not in name and namespace:
            full = f"{namespace}.{name}"
            if full in self.names:
                return self.names[full]
        if name in self.names:
            return self.names[name]
        raise AvroError(f'"{name}" is not a defined name. The type of a field must be a defined name or a {{"type": ...}} expression.')

    def _define(self, obj, namespace, kind):
        fullname, simple, ns = _split_fullname(obj.get("name"), obj.get("namespace", namespace))
        if fullname in self.names:
            raise AvroError(f"Can't redefine: {fullname}")
        aliases = obj.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise AvroError(f"aliases not an array of strings: {json.dumps(aliases)}")
        full_aliases = tuple(_split_fullname(a, ns)[0] for a in aliases)
        node = Avro(kind, fullname=fullname, name=simple, aliases=full_aliases)
        self.names[fullname] = node
        return node, ns

    def _record(self, obj, namespace, kind):
        node, ns = self._define(obj, namespace, "record")
        fields = obj.get("fields")
        if not isinstance(fields, list):
            raise AvroError(f"Record has no fields: {json.dumps(obj)}")
        seen = set()
        parsed = []
        for pos, f in enumerate(fields):
            if not isinstance(f, dict):
                raise AvroError(f"Field not an object: {json.dumps(f)}")
            fname = f.get("name")
            _check_name(fname, "field")
            if fname in seen:
                raise AvroError(f"Duplicate field {fname} in record {node.fullname}")
            seen.add(fname)
            if "type" not in f:
                raise AvroError(f"No field type: {json.dumps(f)}")
            ftype = self.parse(f["type"], ns)
            has_default = "default" in f
            default = f.get("default")
            if has_default and not valid_default(ftype, default):
                raise AvroError(
                    f"Invalid default for field {fname}: {json.dumps(default)} not a {describe_json(ftype)}"
                )
            faliases = f.get("aliases", [])
            if not isinstance(faliases, list):
                raise AvroError(f"aliases not an array: {json.dumps(faliases)}")
            parsed.append(Field(fname, ftype, has_default, default, tuple(faliases), pos))
        node.fields = tuple(parsed)
        return node

    def _enum(self, obj, namespace):
        node, _ = self._define(obj, namespace, "enum")
        symbols = obj.get("symbols")
        if not isinstance(symbols, list):
            raise AvroError(f"Enum has no symbols: {json.dumps(obj)}")
        for s in symbols:
            _check_name(s, "enum symbol")
        if len(set(symbols)) != len(symbols):
            raise AvroError(f"Duplicate enum symbol in {node.fullname}")
        node.symbols = tuple(symbols)
        if "default" in obj:
            if obj["default"] not in symbols:
                raise AvroError(f"The Enum Default: {obj['default']} is not in the enum symbol set: {symbols}")
            node.enum_default = obj["default"]
        return node

    def _fixed(self, obj, namespace, logical):
        node, _ = self._define(obj, namespace, "fixed")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise AvroError(f"Invalid or no size: {json.dumps(obj)}")
        node.size = size
        node.logical = logical
        return node

    def _union(self, items, namespace):
        branches = []
        seen = set()
        for item in items:
            b = self.parse(item, namespace)
            if b.kind == "union":
                raise AvroError(f"Nested union: {json.dumps(items)}")
            key = b.fullname if b.named else b.kind
            if key in seen:
                raise AvroError(f"Duplicate in union: {key}")
            seen.add(key)
            branches.append(b)
        return Avro("union", branches=tuple(branches))


def describe_json(t):
    if t.kind == "union":
        return "union of " + ", ".join(describe_json(b) for b in t.branches)
    return t.describe()


def valid_default(t, v, _depth=0):
    """Whether v is a valid JSON default for type t (Avro 1.11 rules)."""
    if _depth > 64:
        return True
    k = t.kind
    if k == "null":
        return v is None
    if k == "boolean":
        return isinstance(v, bool)
    if k in ("int", "long"):
        return isinstance(v, int) and not isinstance(v, bool)
    if k in ("float", "double"):
        return isinstance(v, (int, float)) and not isinstance(v, bool) or v in ("NaN", "Infinity", "-Infinity")
    if k in ("bytes", "string", "fixed"):
        return isinstance(v, str)
    if k == "enum":
        return isinstance(v, str) and v in t.symbols
    if k == "array":
        return isinstance(v, list) and all(valid_default(t.items, x, _depth + 1) for x in v)
    if k == "map":
        return isinstance(v, dict) and all(valid_default(t.values, x, _depth + 1) for x in v.values())
    if k == "union":
        return any(valid_default(b, v, _depth + 1) for b in t.branches)
    if k == "record":
        if not isinstance(v, dict):
            return False
        for f in t.fields:
            if f.name in v:
                if not valid_default(f.type, v[f.name], _depth + 1):
                    return False
            elif not f.has_default:
                return False
        return True
    return False


def canonical_json(obj):
    """Key for "is this the same schema": JSON with sorted keys, no spaces, and
    {"type": "<primitive>"} without other attributes collapsed to "<primitive>"."""

    def norm(o):
        if isinstance(o, dict):
            if set(o) == {"type"} and isinstance(o["type"], str) and o["type"] in PRIMITIVES:
                return o["type"]
            return {k: norm(v) for k, v in o.items()}
        if isinstance(o, list):
            return [norm(x) for x in o]
        return o

    return json.dumps(norm(obj), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------
# Avro schema compatibility (org.apache.avro.SchemaCompatibility semantics)
# --------------------------------------------------------------------------

PROMOTIONS = {
    # reader kind: writer kinds it can read besides its own
    "long": {"int"},
    "float": {"int", "long"},
    "double": {"int", "long", "float"},
    "bytes": {"string"},
    "string": {"bytes"},
}


class Incompatibility:
    def __init__(self, kind, path, description, info=""):
        self.kind = kind
        self.path = path
        self.description = description
        self.info = info

    def render(self):
        return (
            f"{{errorType:'{self.kind}', description:'{self.description}', "
            f"additionalInfo:'{self.info}'}}"
        )


def check_reader_writer(reader, writer, reader_label="new", writer_label="old"):
    """Incompatibilities found when `reader` reads data written with `writer`.
    The labels name the two schemas in the messages ("new"/"old")."""
    found = []
    _check(reader, writer, "", found, set())
    if (reader_label, writer_label) != ("new", "old"):
        for p in found:
            p.description = (
                p.description.replace("new schema", "\0").replace("old schema", f"{writer_label} schema")
                .replace("\0", f"{reader_label} schema")
            )
    return found


def _names_match(reader, writer):
    return reader.name == writer.name or writer.fullname in reader.aliases


def _check(r, w, path, found, in_progress):
    if r.named and w.named:
        key = (id(r), id(w))
        if key in in_progress:
            return  # recursive type: assumed compatible while being checked
        in_progress = in_progress | {key}

    if r.kind == w.kind:
        k = r.kind
        if k in PRIMITIVES:
            return
        if k == "record":
            if not _names_match(r, w):
                found.append(Incompatibility(
                    "NAME_MISMATCH", path + "/name",
                    f"expected: {w.fullname}", "expected: " + w.fullname))
            writer_fields = {f.name: f for f in w.fields}
            for f in r.fields:
                wf = writer_fields.get(f.name)
                if wf is None:
                    for alias in f.aliases:
                        if alias in writer_fields:
                            wf = writer_fields[alias]
                            break
                if wf is None:
                    if not f.has_default:
                        found.append(Incompatibility(
                            "READER_FIELD_MISSING_DEFAULT_VALUE", f"{path}/fields/{f.position}",
                            f"The field '{f.name}' at path '{path}/fields/{f.position}' in the new schema has "
                            f"no default value and is missing in the old schema", f.name))
                else:
                    _check(f.type, wf.type, f"{path}/fields/{f.position}/type", found, in_progress)
            return
        if k == "enum":
            if not _names_match(r, w):
                found.append(Incompatibility(
                    "NAME_MISMATCH", path + "/name", f"expected: {w.fullname}", "expected: " + w.fullname))
            missing = [s for s in w.symbols if s not in r.symbols]
            if missing and r.enum_default is None:
                found.append(Incompatibility(
                    "MISSING_ENUM_SYMBOLS", path + "/symbols",
                    f"The new schema is missing enum symbols '{missing}' at path '{path}/symbols' in the old schema",
                    str(missing)))
            return
        if k == "fixed":
            if not _names_match(r, w):
                found.append(Incompatibility(
                    "NAME_MISMATCH", path + "/name", f"expected: {w.fullname}", "expected: " + w.fullname))
            if r.size != w.size:
                found.append(Incompatibility(
                    "FIXED_SIZE_MISMATCH", path + "/size",
                    f"The size of FIXED type field at path '{path}/size' in the new schema does not match "
                    f"with the old schema", f"expected: {w.size}, found: {r.size}"))
            return
        if k == "array":
            _check(r.items, w.items, path + "/items", found, in_progress)
            return
        if k == "map":
            _check(r.values, w.values, path + "/values", found, in_progress)
            return
        if k == "union":
            for i, wb in enumerate(w.branches):
                sub = []
                _check(r, wb, path, sub, in_progress)
                if sub:
                    found.append(Incompatibility(
                        "MISSING_UNION_BRANCH", f"{path}/{i}",
                        f"The new schema is missing a type inside a union field at path '{path}/{i}' "
                        f"in the old schema", f"reader union lacking writer type: {wb.describe().upper()}"))
            return

    # Different kinds.
    if w.kind == "union":
        for i, wb in enumerate(w.branches):
            sub = []
            _check(r, wb, path, sub, in_progress)
            if sub:
                found.append(Incompatibility(
                    "MISSING_UNION_BRANCH", f"{path}/{i}",
                    f"The new schema is missing a type inside a union field at path '{path}/{i}' in the old schema",
                    f"reader union lacking writer type: {wb.describe().upper()}"))
        return
    if r.kind == "union":
        for rb in r.branches:
            sub = []
            _check(rb, w, path, sub, in_progress)
            if not sub:
                return
        found.append(Incompatibility(
            "MISSING_UNION_BRANCH", path,
            f"The new schema is missing a type inside a union field at path '{path}' in the old schema",
            f"reader union lacking writer type: {w.describe().upper()}"))
        return
    if w.kind in PROMOTIONS.get(r.kind, ()):
        return
    found.append(Incompatibility(
        "TYPE_MISMATCH", path,
        f"The type (path '{path}') of a field in the new schema does not match with the old schema",
        f"reader type: {r.describe().upper()} not compatible with writer type: {w.describe().upper()}"))


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------


class StoredSchema:
    def __init__(self, schema_id, schema_type, text, references, key):
        self.id = schema_id
        self.type = schema_type
        self.text = text  # compact JSON (Avro/JSON) or the text as given
        self.references = references  # list of {"name","subject","version"}
        self.key = key


class SubjectVersion:
    def __init__(self, version, schema):
        self.version = version
        self.schema = schema
        self.deleted = False


class Registry:
    def __init__(self):
        self.lock = threading.RLock()
        self.schemas = {}  # id -> StoredSchema
        self.by_key = {}  # (type, canonical, refs) -> StoredSchema
        self.subjects = {}  # subject -> list[SubjectVersion] (ascending)
        self.global_level = "BACKWARD"
        self.subject_levels = {}
        self.global_mode = "READWRITE"
        self.next_id = 1

    # -- helpers ----------------------------------------------------------

    def live_versions(self, subject, deleted=False):
        return [v for v in self.subjects.get(subject, []) if deleted or not v.deleted]

    def subject_exists(self, subject, deleted=False):
        return bool(self.live_versions(subject, deleted))

    def level_for(self, subject):
        return self.subject_levels.get(subject, self.global_level)

    def get_version(self, subject, version, deleted=False):
        """version: int or "latest" (already validated)."""
        if not self.subject_exists(subject, deleted):
            raise subject_not_found(subject)
        versions = self.live_versions(subject, deleted)
        if version == "latest":
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        raise version_not_found(version)

    def resolve_references(self, references):
        """Named Avro types defined by the referenced schemas (recursively)."""
        if not isinstance(references, list):
            raise invalid_schema("references must be an array")
        names = {}
        for ref in references:
            if not isinstance(ref, dict) or not all(k in ref for k in ("name", "subject", "version")):
                raise invalid_schema(f"invalid reference {json.dumps(ref)}")
            try:
                version = parse_version(ref["version"]) if ref["version"] != -1 else "latest"
                sv = self.get_version(ref["subject"], version)
            except ApiError:
                raise invalid_schema(
                    f"reference {ref['name']} to subject {ref['subject']} version {ref['version']} not found"
                ) from None
            stored = sv.schema
            if stored.type == "AVRO":
                parser = AvroParser(self.resolve_references(stored.references))
                parser.parse(json.loads(stored.text))
                names.update(parser.names)
        return names

    def parse_request(self, body):
        """Validates a {"schema", "schemaType", "references"} body ->
        (schema_type, parsed Avro or None, compact text, references, key)."""
        if not isinstance(body, dict):
            raise ApiError(422, 422, "Unrecognized request body")
        text = body.get("schema")
        if not isinstance(text, str) or not text.strip():
            raise invalid_schema("Empty schema")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type not in SCHEMA_TYPES:
            raise ApiError(422, 42201, f"Invalid schema type {schema_type}")
        references = body.get("references") or []
        if schema_type == "PROTOBUF":
            refs_key = json.dumps(references, sort_keys=True)
            return schema_type, None, text, references, (schema_type, text.strip(), refs_key)
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise invalid_schema(f"{text} is not valid JSON: {e}") from None
        parsed = None
        if schema_type == "AVRO":
            known = self.resolve_references(references)
            try:
                parsed = AvroParser(known).parse(obj)
            except AvroError as e:
                raise ApiError(
                    422, 42201,
                    f"Invalid schema {text} with refs {json.dumps(references)} of type AVRO, details: {e}",
                ) from None
        elif not isinstance(obj, (dict, bool)):
            raise invalid_schema(f"{text} is not a JSON schema")
        refs_key = json.dumps(
            sorted((r.get("name"), r.get("subject"), r.get("version")) for r in references if isinstance(r, dict))
        )
        compact = json.dumps(obj, separators=(",", ":"))
        return schema_type, parsed, compact, references, (schema_type, canonical_json(obj), refs_key)

    def parsed(self, stored):
        known = self.resolve_references(stored.references)
        return AvroParser(known).parse(json.loads(stored.text))

    def incompatibilities(self, subject, new_parsed, new_type, level, against):
        """Messages for every way new_parsed breaks `level` against the stored
        versions `against` (newest last)."""
        if level == "NONE" or new_type != "AVRO" or not against:
            return []
        if not level.endswith("_TRANSITIVE"):
            against = against[-1:]
        messages = []
        for old in reversed(against):
            if old.schema.type != "AVRO":
                continue
            old_parsed = self.parsed(old.schema)
            problems = []
            if level.startswith(("BACKWARD", "FULL")):
                problems += check_reader_writer(new_parsed, old_parsed)
            if level.startswith(("FORWARD", "FULL")):
                problems += check_reader_writer(old_parsed, new_parsed, "old", "new")
            if problems:
                messages.append(
                    [p.render() for p in problems]
                    + [
                        f"{{oldSchemaVersion: {old.version}}}",
                        f"{{oldSchema: '{old.schema.text}'}}",
                        f"{{validateFields: 'false', compatibility: '{level}'}}",
                    ]
                )
        return messages

    # -- operations ---------------------------------------------------------

    def register(self, subject, body):
        with self.lock:
            if self.global_mode == "READONLY":
                raise ApiError(422, 42205, f"Subject {subject} is in read-only mode")
            schema_type, parsed, text, references, key = self.parse_request(body)
            live = self.live_versions(subject)
            for v in live:
                if v.schema.key == key:
                    return {"id": v.schema.id}
            level = self.level_for(subject)
            problems = self.incompatibilities(subject, parsed, schema_type, level, live)
            if problems:
                details = ", ".join(problems[0])
                raise ApiError(
                    409, 409,
                    f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
                    f"details: [{details}]",
                )
            stored = self.by_key.get(key)
            if stored is None:
                stored = StoredSchema(self.next_id, schema_type, text, references, key)
                self.next_id += 1
                self.schemas[stored.id] = stored
                self.by_key[key] = stored
            all_versions = self.subjects.setdefault(subject, [])
            number = (all_versions[-1].version + 1) if all_versions else 1
            all_versions.append(SubjectVersion(number, stored))
            return {"id": stored.id}

    def lookup(self, subject, body, deleted):
        with self.lock:
            _, _, _, _, key = self.parse_request(body)
            if not self.subject_exists(subject, deleted):
                raise subject_not_found(subject)
            for v in reversed(self.live_versions(subject, deleted)):
                if v.schema.key == key:
                    return version_body(subject, v)
            raise schema_not_found()

    def test_compatibility(self, subject, version, body, verbose):
        with self.lock:
            schema_type, parsed, _, _, _ = self.parse_request(body)
            level = self.level_for(subject)
            if version is None:  # against all versions
                against = self.live_versions(subject)
                if level in ("BACKWARD", "FORWARD", "FULL"):
                    level = level + "_TRANSITIVE"
            elif version == "latest" and not self.subject_exists(subject):
                against = []
            else:
                against = [self.get_version(subject, version)]
            problems = self.incompatibilities(subject, parsed, schema_type, level, against)
            result = {"is_compatible": not problems}
            if verbose:
                result["messages"] = [m for group in problems for m in group]
            return result

    def delete_subject(self, subject, permanent):
        with self.lock:
            versions = self.subjects.get(subject, [])
            if not versions:
                raise subject_not_found(subject)
            if permanent:
                if any(not v.deleted for v in versions):
                    raise ApiError(
                        404, 40405,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
                del self.subjects[subject]
                self.subject_levels.pop(subject, None)
                return [v.version for v in versions]
            live = [v for v in versions if not v.deleted]
            if not live:
                raise ApiError(
                    404, 40404, f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
                )
            for v in live:
                v.deleted = True
            return [v.version for v in live]

    def delete_version(self, subject, version, permanent):
        with self.lock:
            versions = self.subjects.get(subject, [])
            if not versions:
                raise subject_not_found(subject)
            if version == "latest":
                candidates = [v for v in versions if permanent or not v.deleted]
                if not candidates:
                    raise subject_not_found(subject)
                target = candidates[-1]
            else:
                target = next((v for v in versions if v.version == version), None)
                if target is None:
                    raise version_not_found(version)
            if permanent:
                if not target.deleted:
                    raise ApiError(
                        404, 40407,
                        f"Subject '{subject}' Version {target.version} was not deleted first before being "
                        f"permanently deleted",
                    )
                versions.remove(target)
                if not versions:
                    del self.subjects[subject]
            else:
                if target.deleted:
                    raise ApiError(
                        404, 40406,
                        f"Subject '{subject}' Version {target.version} was soft deleted.Set permanent=true to "
                        f"delete permanently",
                    )
                target.deleted = True
            return target.version


def version_body(subject, v):
    body = {"subject": subject, "version": v.version, "id": v.schema.id}
    if v.schema.type != "AVRO":
        body["schemaType"] = v.schema.type
    if v.schema.references:
        body["references"] = v.schema.references
    body["schema"] = v.schema.text
    return body


def parse_version(raw):
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 1 <= raw <= MAX_VERSION:
            return raw
        raise invalid_version(raw)
    if isinstance(raw, str):
        if raw == "latest":
            return "latest"
        if re.fullmatch(r"-?\d+", raw):
            n = int(raw)
            if n == -1:
                return "latest"
            if 1 <= n <= MAX_VERSION:
                return n
    raise invalid_version(raw)


def flag(query, name):
    values = query.get(name)
    return bool(values) and values[-1].lower() == "true"


def paginate(items, query):
    try:
        offset = int(query.get("offset", ["0"])[-1])
        limit = int(query.get("limit", ["-1"])[-1])
    except ValueError:
        return items
    items = items[max(offset, 0):]
    return items[:limit] if limit >= 0 else items


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class RawJson:
    """A response body that is already JSON text (sent as is)."""

    def __init__(self, text):
        self.text = text


class Handler(BaseHTTPRequestHandler):
    server_version = "tickflow-schema-registry/1"
    protocol_version = "HTTP/1.1"
    registry: Registry = None  # set on the server class
    basic_auth: str | None = None
    quiet = True
    faults = None  # --test-faults: {"lock", "queue", "requests"}

    def log_message(self, fmt, *args):  # noqa: D401 - keep stderr quiet
        if not self.quiet:
            super().log_message(fmt, *args)

    # -- plumbing ---------------------------------------------------------

    def send_json(self, status, body):
        data = body.text.encode() if isinstance(body, RawJson) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, status, code, message):
        self.send_json(status, {"error_code": code, "message": message})

    def authorized(self):
        if not self.basic_auth:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), self.basic_auth.encode())

    def read_body(self):
        raw = self._raw
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype and ctype not in ACCEPTED_BODY_TYPES:
            raise ApiError(415, 415, "HTTP 415 Unsupported Media Type")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, 400, f"Unexpected character in request body: {e}") from None

    def test_faults(self, path):
        """--test-faults: the control endpoints, or the fault for this
        request. Returns True when the request was answered here."""
        state = self.faults
        if path.startswith("/__test__/"):
            if path == "/__test__/faults" and self.command == "PUT":
                faults = json.loads(self._raw or b"[]")
                with state["lock"]:
                    state["queue"] = [dict(f) for f in faults]
                self.send_json(200, {"faults": len(faults)})
            elif path == "/__test__/faults" and self.command == "DELETE":
                with state["lock"]:
                    state["queue"] = []
                self.send_json(200, {})
            elif path == "/__test__/requests":
                with state["lock"]:
                    self.send_json(200, dict(state["requests"]))
            else:
                self.send_error_json(404, 404, "HTTP 404 Not Found")
            return True
        fault = None
        with state["lock"]:
            state["requests"][path] = state["requests"].get(path, 0) + 1
            for f in state["queue"]:
                if f.get("count", 1) > 0 and path.startswith(f.get("path", "/")):
                    f["count"] = f.get("count", 1) - 1
                    fault = f
                    break
        if fault is None:
            return False
        if fault.get("delay"):
            import time
            time.sleep(float(fault["delay"]))
        status = fault.get("status")
        if not status:
            return False
        data = json.dumps({
            "error_code": fault.get("error_code", status),
            "message": fault.get("message", f"injected HTTP {status}"),
        }).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if fault.get("retry_after") is not None:
            self.send_header("Retry-After", str(fault["retry_after"]))
        self.end_headers()
        self.wfile.write(data)
        return True

    def handle_any(self):
        try:
            # Always consume the body so a kept-alive connection stays in sync.
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            self._raw = self.rfile.read(length) if length > 0 else b""
            if self.faults is not None and self.test_faults(urlsplit(self.path).path):
                return
            if not self.authorized():
                self.send_error_json(401, 401, "Unauthorized")
                return
            split = urlsplit(self.path)
            parts = [unquote(p) for p in split.path.split("/") if p != ""]
            query = parse_qs(split.query, keep_blank_values=True)
            status, body = self.route(self.command, parts, query)
            self.send_json(status, body)
        except ApiError as e:
            self.send_error_json(e.status, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - a registry answers 500, never dies
            self.send_error_json(500, 50001, f"Error in the backend data store: {type(e).__name__}: {e}")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    # -- routes -------------------------------------------------------------

    def route(self, method, parts, query):
        reg = self.registry
        n = len(parts)
        not_found = ApiError(404, 404, "HTTP 404 Not Found")
        not_allowed = ApiError(405, 405, "HTTP 405 Method Not Allowed")

        if n == 0:
            if method in ("GET", "HEAD"):
                return 200, {}
            raise not_allowed

        head = parts[0]

        if head == "schemas":
            if n == 2 and parts[1] == "types":
                return 200, list(SCHEMA_TYPES)
            if n >= 3 and parts[1] == "ids":
                if method not in ("GET", "HEAD"):
                    raise not_allowed
                try:
                    schema_id = int(parts[2])
                except ValueError:
                    raise not_found from None
                with reg.lock:
                    stored = reg.schemas.get(schema_id)
                    if stored is None:
                        raise schema_not_found(schema_id)
                    if n == 3:
                        body = {}
                        if stored.type != "AVRO":
                            body["schemaType"] = stored.type
                        if stored.references:
                            body["references"] = stored.references
                        body["schema"] = stored.text
                        return 200, body
                    if n == 4 and parts[3] == "schema":
                        return 200, RawJson(stored.text) if stored.type != "PROTOBUF" else stored.text
                    deleted = flag(query, "deleted")
                    pairs = [
                        (s, v.version)
                        for s, versions in sorted(reg.subjects.items())
                        for v in versions
                        if v.schema is stored and (deleted or not v.deleted)
                    ]
                    if n == 4 and parts[3] == "versions":
                        return 200, paginate([{"subject": s, "version": v} for s, v in pairs], query)
                    if n == 4 and parts[3] == "subjects":
                        return 200, paginate(sorted({s for s, _ in pairs}), query)
            raise not_found

        if head == "subjects":
            if n == 1:
                if method not in ("GET", "HEAD"):
                    raise not_allowed
                deleted_only = flag(query, "deleted_only")
                deleted = flag(query, "deleted") or deleted_only
                prefix = (query.get("subjectPrefix") or [""])[-1]
                with reg.lock:
                    names = []
                    for s, versions in sorted(reg.subjects.items()):
                        if not s.startswith(prefix):
                            continue
                        has_live = any(not v.deleted for v in versions)
                        if deleted_only:
                            if any(v.deleted for v in versions):
                                names.append(s)
                        elif has_live or (deleted and versions):
                            names.append(s)
                return 200, paginate(names, query)
            subject = parts[1]
            if n == 2:
                if method == "POST":
                    return 200, reg.lookup(subject, self.read_body(), flag(query, "deleted"))
                if method == "DELETE":
                    return 200, reg.delete_subject(subject, flag(query, "permanent"))
                raise not_allowed
            if parts[2] != "versions":
                raise not_found
            if n == 3:
                if method == "POST":
                    return 200, reg.register(subject, self.read_body())
                if method in ("GET", "HEAD"):
                    deleted_only = flag(query, "deleted_only")
                    deleted = flag(query, "deleted") or deleted_only
                    with reg.lock:
                        if not reg.subject_exists(subject, True if deleted_only else deleted):
                            raise subject_not_found(subject)
                        versions = reg.live_versions(subject, deleted)
                        if deleted_only:
                            versions = [v for v in versions if v.deleted]
                        return 200, paginate([v.version for v in versions], query)
                raise not_allowed
            version = parse_version(parts[3])
            if n == 4:
                if method in ("GET", "HEAD"):
                    with reg.lock:
                        return 200, version_body(subject, reg.get_version(subject, version, flag(query, "deleted")))
                if method == "DELETE":
                    return 200, reg.delete_version(subject, version, flag(query, "permanent"))
                raise not_allowed
            if n == 5 and method in ("GET", "HEAD"):
                with reg.lock:
                    v = reg.get_version(subject, version, flag(query, "deleted"))
                    if parts[4] == "schema":
                        return 200, RawJson(v.schema.text) if v.schema.type != "PROTOBUF" else v.schema.text
                    if parts[4] == "referencedby":
                        ids = sorted({
                            sv.schema.id
                            for versions in reg.subjects.values()
                            for sv in versions
                            if not sv.deleted and any(
                                r.get("subject") == subject and r.get("version") == v.version
                                for r in sv.schema.references
                            )
                        })
                        return 200, ids
            raise not_found

        if head == "config":
            if n == 1:
                if method in ("GET", "HEAD"):
                    with reg.lock:
                        return 200, {"compatibilityLevel": reg.global_level}
                if method == "PUT":
                    level = self.level_from(self.read_body())
                    with reg.lock:
                        reg.global_level = level
                    return 200, {"compatibility": level}
                if method == "DELETE":
                    with reg.lock:
                        old, reg.global_level = reg.global_level, "BACKWARD"
                    return 200, {"compatibilityLevel": old}
                raise not_allowed
            if n == 2:
                subject = parts[1]
                if method in ("GET", "HEAD"):
                    with reg.lock:
                        if subject in reg.subject_levels:
                            return 200, {"compatibilityLevel": reg.subject_levels[subject]}
                        if flag(query, "defaultToGlobal"):
                            return 200, {"compatibilityLevel": reg.global_level}
                    raise ApiError(
                        404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
                    )
                if method == "PUT":
                    level = self.level_from(self.read_body())
                    with reg.lock:
                        reg.subject_levels[subject] = level
                    return 200, {"compatibility": level}
                if method == "DELETE":
                    with reg.lock:
                        if subject not in reg.subjects:
                            raise subject_not_found(subject)
                        old = reg.subject_levels.pop(subject, reg.global_level)
                    return 200, {"compatibilityLevel": old}
                raise not_allowed
            raise not_found

        if head == "compatibility":
            if method != "POST":
                raise not_allowed
            if n in (4, 5) and parts[1] == "subjects" and parts[3] == "versions":
                version = parse_version(parts[4]) if n == 5 else None
                return 200, reg.test_compatibility(parts[2], version, self.read_body(), flag(query, "verbose"))
            raise not_found

        if head == "mode":
            if n == 1 and method in ("GET", "HEAD"):
                return 200, {"mode": reg.global_mode}
            if n == 2 and method in ("GET", "HEAD"):
                return 200, {"mode": reg.global_mode}
            if n in (1, 2) and method == "PUT":
                body = self.read_body()
                mode = body.get("mode") if isinstance(body, dict) else None
                if mode not in ("READWRITE", "READONLY", "IMPORT"):
                    raise ApiError(422, 42204, "Invalid mode. Valid values are READWRITE, READONLY, and IMPORT.")
                if n == 1:
                    with reg.lock:
                        reg.global_mode = mode
                return 200, {"mode": mode}
            raise not_found

        raise not_found

    @staticmethod
    def level_from(body):
        if not isinstance(body, dict):
            raise invalid_level()
        level = body.get("compatibility", body.get("compatibilityLevel"))
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise invalid_level()
        return level.upper()


def make_server(host="127.0.0.1", port=0, basic_auth=None, quiet=True,
                tls_cert=None, tls_key=None, test_faults=False):
    """A ready-to-serve ThreadingHTTPServer (call serve_forever); for embedding."""
    handler = type("RegistryHandler", (Handler,), {
        "registry": Registry(),
        "basic_auth": basic_auth,
        "quiet": quiet,
        "faults": {"lock": threading.Lock(), "queue": [], "requests": {}} if test_faults else None,
    })
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    ap.add_argument(
        "--basic-auth",
        default=os.environ.get("SCHEMA_REGISTRY_BASIC_AUTH") or None,
        metavar="USER:PASSWORD",
        help="require HTTP basic auth (default: $SCHEMA_REGISTRY_BASIC_AUTH)",
    )
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    ap.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    ap.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    ap.add_argument(
        "--test-faults",
        action="store_true",
        help="tests only: enable the /__test__/ endpoints that inject error answers",
    )
    args = ap.parse_args(argv)
    if args.basic_auth is not None and ":" not in args.basic_auth:
        ap.error("--basic-auth must be USER:PASSWORD")
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    server = make_server(args.host, args.port, args.basic_auth, quiet=not args.verbose,
                         tls_cert=args.tls_cert, tls_key=args.tls_key,
                         test_faults=args.test_faults)
    host, port = server.server_address[:2]
    scheme = "https" if args.tls_cert else "http"
    print(f"{scheme}://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
