"""``python -m pgolf SUBCOMMAND [ARGS]``: the bundle's tooling (the nox sessions call this).

Each subcommand lives in its own module with ``main(argv) -> int`` (``pack`` in pgolf/pack.py
exposes ``cli(argv) -> int``) and is imported only when used. Expected failures (``PgolfError``,
a full disk) print one line ``error: ...`` on stderr and exit non-zero.
"""

from __future__ import annotations

import importlib
import sys

from pgolf.errors import PgolfError, os_error_message

# name -> (module, entry function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("pgolf.data_cmd", "main", "download FineWeb shards + tokenizer, or build them from text"),
    "record": ("pgolf.record", "main", "run the seeds through torchrun; submission.json from the logs"),
    "size": ("pgolf.size_cmd", "main", "code + compressed model bytes per seed against 16,000,000"),
    "budget": ("pgolf.budget_cmd", "main", "train and eval wallclock per seed against 600 s each"),
    "schema": ("pgolf.schema_cmd", "main", "validate submission.json (JSON Schema, Draft 2020-12)"),
    "reproduce": ("pgolf.reproduce_cmd", "main", "re-run the final eval from each artifact and compare"),
    "report": ("pgolf.report_cmd", "main", "loss-curve PNG per seed and a markdown table of the seeds"),
    "demo": ("pgolf.demo", "main", "the whole job on embedded text, on CPU: data, 3 seeds, report, verify"),
    "pack": ("pgolf.pack", "cli", "bundle trainer/ into the self-extracting submission/train_gpt.py"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m pgolf SUBCOMMAND [ARGS]   (SUBCOMMAND --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        entry = getattr(importlib.import_module(module), func)
        return int(entry(rest) or 0)
    except PgolfError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code
    except OSError as e:  # e.g. a full disk in a place that did not wrap its own error
        print(f"error: {os_error_message(e)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
