"""``pgolf schema DIR|FILE``: validate submission.json against the project's JSON Schema (Draft 2020-12).

The schema is verify/submission.schema.json (shared with the verifier). Exit 1 when invalid.
"""

from __future__ import annotations

import argparse
import json
import os

from pgolf.errors import PgolfError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf schema", description=__doc__)
    p.add_argument("path", metavar="DIR|FILE", help="records folder or a submission.json")
    return p


def main(argv: list[str] | None = None) -> int:
    from verify.schema import validate_submission

    args = build_parser().parse_args(argv)
    path = os.path.join(args.path, "submission.json") if os.path.isdir(args.path) else args.path
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise PgolfError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise PgolfError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except OSError as e:
        raise PgolfError(f"{path}: {e.strerror or e}") from None
    errors = validate_submission(obj)
    if errors:
        for e in errors:
            print(f"{path}: {e}")
        print(f"schema: FAIL ({len(errors)} error(s))")
        return 1
    print(f"schema: ok, {path} is valid (Draft 2020-12, verify/submission.schema.json)")
    return 0
