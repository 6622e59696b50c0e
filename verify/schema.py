"""The project's JSON Schema for submission.json (Draft 2020-12), shipped as package data.

``validate_submission(obj)`` is the one entry point the pipeline, ``nox -s schema`` and the
verifier share: it returns human-readable errors (``<json path>: <message>``), empty when valid.
"""

from __future__ import annotations

import datetime as _dt
import json
from functools import lru_cache
from importlib import resources

SCHEMA_FILE = "submission.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The schema as a dict (read once from the package)."""
    return json.loads(resources.files("verify").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator  # imported lazily: ~50 ms

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _where(path) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate_submission(obj) -> list[str]:
    """Errors of ``obj`` (a parsed submission.json) against the schema; [] when valid."""
    errors = []
    for err in sorted(
        _validator().iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message)
    ):
        msg = err.message
        if len(msg) > 200:
            msg = msg[:200] + "..."
        errors.append(f"{_where(err.absolute_path)}: {msg}")
    # a pattern cannot tell 2026-02-30 from a real date
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("date"), str)
        and not any(e.startswith("$.date") for e in errors)
    ):
        d = obj["date"].replace("Z", "+00:00").replace(" ", "T")
        try:
            _dt.datetime.fromisoformat(d) if "T" in d else _dt.date.fromisoformat(d)
        except ValueError:
            errors.append(f"$.date: {obj['date']!r} is not a real date")
    if isinstance(obj, dict):
        for key in ("val_bpb", "val_loss", "val_bpb_std", "val_loss_std"):
            v = obj.get(key)
            if isinstance(v, float) and v != v:
                errors.append(f"$.{key}: NaN is not a valid number")
    return errors
