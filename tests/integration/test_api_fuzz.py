"""Fuzzing the API on PostgreSQL + Redis: Schemathesis over the OpenAPI document, Hypothesis through the spec
validator. No request may produce a 5xx, and every answer must match the document (status, content type,
schema). PostgreSQL is the strict one here: it refuses NUL characters and invalid Unicode that SQLite would store.

``GRADCHECK_FUZZ_EXAMPLES`` (default 50) sets the examples per operation and mode; raise it for a longer hunt.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.integration.service_fixtures import RedisTarget
from tests.service_support import TINY_SPEC

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("GRADCHECK_FUZZ_EXAMPLES", "50"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class FuzzTarget:
    app: Flask
    client: FlaskClient
    headers: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_target(pg_url: str, redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[FuzzTarget]:
    """The real app on the session's PostgreSQL database and Redis, with a project token (no worker: runs stay
    queued), and one finished run so the run routes also meet an id that exists."""
    from gradcheck_service.service.app import create_app
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.tokens import create_token

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app({"TESTING": True, "DATABASE_URL": pg_url, "BROKER_URL": redis_target.url, "DATA_DIR": str(tmp),
                      "BROKER_KEY_PREFIX": f"{redis_target.prefix}fuzz-{uuid.uuid4().hex[:6]}:",
                      "MAX_CONTENT_LENGTH": 64 * 1024, "SUBMIT_RATE_LIMIT": 0})  # fuzzing submits hundreds
    with app.app_context():
        token = create_token(store.session(), f"fuzz-{uuid.uuid4().hex[:8]}").token
        store.session().commit()
    yield FuzzTarget(app, app.test_client(), {"Authorization": f"Bearer {token}"})
    store.session.remove()


@pytest.fixture(scope="module")
def api_schema(fuzz_target: FuzzTarget) -> Any:
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_target.app)


def _documented_operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) of every operation in the OpenAPI document, read from an app built for the purpose;
    negative mode (data that violates the document) only where the operation takes any input."""
    import tempfile

    from gradcheck_service.service.api.openapi import build_document
    from gradcheck_service.service.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DATA_DIR": tmp, "SECRET_KEY": "collection"})
        with app.app_context():
            paths = build_document(app)["paths"]
    cases = []
    for path, methods in paths.items():
        for method, operation in methods.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


# (Schemathesis's own pytest loader, ``from_fixture``, does not run under pytest 9; its Hypothesis strategies do.)
@pytest.mark.parametrize(("method", "path", "mode"), _documented_operations())
def test_every_operation_conforms_and_never_answers_5xx(api_schema: Any, fuzz_target: FuzzTarget, method: str,
                                                       path: str, mode: GenerationMode) -> None:
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=strategy)
    def conforms(case: Any) -> None:
        case.call_and_validate(headers=fuzz_target.headers, checks=CHECKS)

    conforms()


# --- the spec validator, through the API ------------------------------------------------------------------------

_JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
_LAYER_TYPES = ["linear", "conv2d", "relu", "tanh", "sigmoid", "gelu", "dropout", "batchnorm1d", "layernorm",
                "flatten", "embedding", "lstm", "attention", "softmax", "nope"]
_NUMBER = (st.integers(min_value=-3, max_value=2**70) | st.floats(allow_nan=False) | st.text(max_size=5)
           | st.none() | st.just(10**400))


@st.composite
def near_valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The tiny spec with a few fields replaced: wrong types, huge or negative numbers, unknown fields,
    strange layer lists -- the inputs that reach deep into the validator and the shape inference."""
    spec = json.loads(json.dumps(TINY_SPEC))
    layers = draw(st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(_LAYER_TYPES)},
        optional={"out_features": _NUMBER, "in_features": _NUMBER, "kernel_size": _NUMBER, "channels": _NUMBER,
                  "p": _NUMBER, "num_embeddings": _NUMBER, "hidden_size": _NUMBER, "heads": _NUMBER,
                  "unknown": _JSON}), max_size=5))
    if layers or draw(st.booleans()):
        spec["layers"] = layers
    if draw(st.booleans()):
        spec["input"] = {"shape": draw(st.lists(_NUMBER, max_size=5)),
                         "dtype": draw(st.sampled_from(["float64", "float32", "int64", "complex", "x"]))}
    for key in draw(st.lists(st.sampled_from(["name", "seed", "loss", "extra", "input", "layers"]), max_size=2)):
        spec[key] = draw(_JSON)
    return spec


def _assert_clean_422_or_202(response: Any) -> None:
    assert response.status_code in (202, 422), (response.status_code, response.get_data(as_text=True)[:500])
    if response.status_code == 422:
        problems = response.get_json()["error"]["problems"]
        assert problems, response.get_json()
        for problem in problems:
            assert problem["path"].startswith("$") and problem["message"], problem


@settings(max_examples=EXAMPLES * 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=near_valid_specs() | _JSON)
def test_spec_validator_through_the_api_answers_202_or_422_with_paths(fuzz_target: FuzzTarget, spec: Any) -> None:
    response = fuzz_target.client.post("/api/v1/runs", json={"spec": spec}, headers=fuzz_target.headers)
    _assert_clean_422_or_202(response)


def _body(rest: str) -> str:
    """A body as JSON text (with tokens json.dumps would not write): the tiny spec, then ``rest``."""
    return '{"spec": ' + json.dumps(TINY_SPEC) + ", " + rest + "}"


@pytest.mark.parametrize(("body", "path"), [
    ("{not json", "$"),
    ("[" * 30_000 + "]" * 30_000, "$"),  # nesting that would exhaust Python's JSON decoder's recursion
    (json.dumps({"spec": TINY_SPEC, "colour": "red"}), "$.colour"),
    (json.dumps({"spec": {**TINY_SPEC, "seed": "zero"}}), "$.spec.seed"),
    (json.dumps({"spec": {**TINY_SPEC, "seed": 10**400}}), "$.spec.seed"),
    (json.dumps({"spec": {**TINY_SPEC, "input": {"shape": [10**30, 3], "dtype": "float64"}}}), "$.spec.input.shape[0]"),
    (json.dumps({"spec": TINY_SPEC, "options": {"probes": 1e308}}), "$.options.probes"),
    (json.dumps({"spec": TINY_SPEC, "metadata": {"timeout_s": 1e308}}), "$.metadata.timeout_s"),
    (json.dumps({"spec": {**TINY_SPEC, "name": "a\u0000b"}}), "$.spec.name"),
    (json.dumps({"spec": TINY_SPEC, "metadata": {"git": {"branch": "\ud800"}}}), "$.metadata.git.branch"),
    # non-finite numbers, which PostgreSQL's JSON would refuse at the INSERT (once a 500), and repeated keys
    (_body('"options": {"safety_factor": 1e999}'), "$.options.safety_factor"),
    (_body('"options": {"thresholds": {"exploding_norm": Infinity}}'),
     "$.options.thresholds.exploding_norm"),
    (_body('"metadata": {"timeout_s": NaN}'), "$.metadata.timeout_s"),
    (_body('"options": {"probes": 2, "probes": 3}'), "$.options"),
])
def test_bad_bodies_are_422_naming_the_path(fuzz_target: FuzzTarget, body: str, path: str) -> None:
    response = fuzz_target.client.post("/api/v1/runs", data=body, content_type="application/json",
                                       headers=fuzz_target.headers)
    assert response.status_code == 422, response.get_data(as_text=True)[:500]
    assert path in [p["path"] for p in response.get_json()["error"]["problems"]], response.get_json()


def test_body_over_the_limit_is_413_json(fuzz_target: FuzzTarget) -> None:
    response = fuzz_target.client.post("/api/v1/runs", json={"spec": {**TINY_SPEC, "description": "x" * 70_000}},
                                       headers=fuzz_target.headers)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_large"
    assert "65,536 bytes" in response.get_json()["error"]["message"]
