"""The checks, in the order of issue 6. Each module has ID, NUMBER, RULE and ``run(ctx) -> CheckResult``."""

from __future__ import annotations

from verify.checks import consistency, deep, files, legality, schema, significance, size, time, tokenizer

ALL = [files, schema, consistency, size, time, significance, legality, tokenizer, deep]
