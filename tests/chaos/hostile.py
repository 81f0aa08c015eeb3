"""Hypothesis profiles and strategies for hostile callbacks.

Profiles: ``botrelay-ci`` (default; modest counts so the whole suite stays within CI's budget) and
``botrelay-deep`` (many more examples, for a long local run):

    BOTRELAY_FUZZ_PROFILE=botrelay-deep .venv/bin/pytest tests/ingress/test_fuzz_payloads.py
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import jsonschema_rs
import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from botrelay.ingress.openapi import openapi_document
from botrelay.shared.model import HANDLED_TRIGGERS
from botrelay.shared.settings import Settings
from tests.helpers import fixture

settings.register_profile(
    "botrelay-ci", max_examples=60, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "botrelay-deep", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("BOTRELAY_FUZZ_PROFILE", "botrelay-ci"))


def fuzz(max_examples: int | None = None) -> settings:
    """The active profile, optionally with fewer examples (for tests that cost a request each)."""
    if max_examples is None or PROFILE.max_examples > 1000:
        return PROFILE
    return settings(PROFILE, max_examples=min(max_examples, PROFILE.max_examples))


BASES = ("bot_user_text", "bot_group_text", "webhook_message_sent", "bot_user_custom",
         "webhook_reaction_added", "webhook_group_member_joined", "webhook_message_edited")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (dict keys and list indexes)."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated_callbacks(draw: st.DrawFn) -> dict[str, Any]:
    """A real callback with one to three fields deleted, retyped, or added."""
    doc = copy.deepcopy(fixture(draw(st.sampled_from(BASES))))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = paths(doc)
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent = _parent(doc, path)
        action = draw(st.sampled_from(("delete", "replace", "extra")))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values)
    return doc


# The app the hostile-input ingresses are configured for (the fixtures' app).
APP_ID = "2248348660ad9bd4"


@functools.cache
def _callback_schema() -> jsonschema_rs.Draft202012Validator:
    """The request body schema of the OpenAPI document the ingress serves, as a validator."""
    document = openapi_document(Settings(cometchat_app_id=APP_ID))
    body = document["paths"]["/callback"]["post"]["requestBody"]["content"]
    return jsonschema_rs.Draft202012Validator(
        {**body["application/json"]["schema"], "components": document["components"]})


def expected(body: bytes) -> str:
    """What the ingress must answer for ``body`` (with the right content type), decided from the
    contract, not by the code under test: the OpenAPI schema and the answers table.

    - ``rejected`` (400): not JSON, or JSON that is not an object;
    - ``queued`` / ``ignored`` (200): valid under the schema; ignored when the trigger is not one
      a handler can take, or a bot callback is the bot's own message;
    - ``outside``: JSON outside the schema, which is stricter than the parser (each id bounded
      on its own): 400, or 403 for another app, or 200.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "rejected"
    if not isinstance(doc, dict):
        return "rejected"
    if not _callback_schema().is_valid(doc):
        return "outside"
    if doc["trigger"] not in HANDLED_TRIGGERS:
        return "ignored"
    if "bot" in doc and doc["data"].get("sender") == doc["bot"]:
        return "ignored"
    return "queued"


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)
