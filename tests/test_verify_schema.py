"""verify/submission.schema.json (Draft 2020-12) and validate_submission, the project's one schema."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from verify.schema import load_schema, validate_submission

GOOD = {
    "author": "Jane Doe",
    "github_id": "jdoe",
    "name": "11L record",
    "date": "2026-04-09",
    "val_bpb": 1.0811,
    "val_loss": 2.7925,
    "val_bpb_std": 0.0004,
    "val_loss_std": 0.001,
    "blurb": "text",
    "bytes_total": 15_990_000,
    "bytes_code": 31_999,
    "seeds": [42, 314, 999],
    "seed_results": {
        "42": {
            "val_loss": 2.79,
            "val_bpb": 1.08,
            "artifact_bytes": 15_990_000,
            "steps": 4900,
            "step_avg_ms": 121.3,
            "eval_time_s": 508.8,
            "anything_else": [1, 2],
        }
    },
    "hardware": "8xH100 80GB SXM",
    "track": "10min_16mb",
    "pytorch_version": "2.9.1+cu128",
    "pre_quant_val_bpb": 1.09,
    "technique_summary": "x",
    "compliance": {"free": "form"},
    "bytes_model_int6_zstd": 15_000_000,
    "extra_field_anyone_adds": {"nested": True},
}


def test_the_schema_is_draft_2020_12_and_ships_with_the_package():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["author", "github_id", "name", "date", "val_bpb"]
    assert validate_submission(GOOD) == []


@pytest.mark.parametrize(
    "date", ["2026-03-19", "2026-03-19T10:00:00Z", "2026-03-21T00:00:00+02:00", "2026-03-19T10:00"]
)
def test_dates_that_real_submissions_use(date):
    assert validate_submission({**GOOD, "date": date}) == []


@pytest.mark.parametrize(
    "change,where",
    [
        ({"date": "19/03/2026"}, "$.date"),
        ({"date": "2026-02-30"}, "$.date: '2026-02-30' is not a real date"),
        ({"val_bpb": 0}, "$.val_bpb"),
        ({"val_bpb": "1.08"}, "$.val_bpb"),
        ({"val_bpb": float("nan")}, "$.val_bpb"),
        ({"val_loss": -1.0}, "$.val_loss"),
        ({"bytes_total": 15.5}, "$.bytes_total"),
        ({"bytes_code": 0}, "$.bytes_code"),
        ({"seeds": []}, "$.seeds"),
        ({"seeds": [1, 1]}, "$.seeds"),
        ({"seeds": ["42"]}, "$.seeds[0]"),
        ({"seed_results": {"forty-two": {}}}, "$.seed_results"),
        ({"seed_results": {"42": {"val_bpb": "x"}}}, "$.seed_results.42.val_bpb"),
        ({"seed_results": {"42": {"steps": -1}}}, "$.seed_results.42.steps"),
        ({"val_bpb_std": -0.1}, "$.val_bpb_std"),
        ({"bytes_model_int8_zlib": "15MB"}, "$.bytes_model_int8_zlib"),
        ({"author": ""}, "$.author"),
        ({"hardware": 8}, "$.hardware"),
    ],
)
def test_wrong_types_and_ranges_are_named(change, where):
    errors = validate_submission({**GOOD, **change})
    assert errors and any(e.startswith(where) for e in errors), errors


@pytest.mark.parametrize("field", ["author", "github_id", "name", "date", "val_bpb"])
def test_required_fields(field):
    sub = copy.deepcopy(GOOD)
    del sub[field]
    assert validate_submission(sub) == [f"$: '{field}' is a required property"]


def test_not_an_object():
    assert validate_submission([1, 2]) == ["$: [1, 2] is not of type 'object'"]
    assert validate_submission(None)
