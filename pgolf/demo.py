"""``pgolf demo``: the whole job on the embedded default text, on CPU, in minutes.

1. data: CaseOps data like the default stack's (PRESET=pr1855), at vocab 1024: Python's own
   English text (pydoc_data.topics + stdlib docstrings) through the CaseOps transform, a
   SentencePiece BPE tokenizer with the operators reserved, train/val shards in the official
   format and the val byte sidecars, under WORK/data (``--plain``: no CaseOps);
2. record: three seeds (42 314 999) through torchrun with PRESET=tiny, one process each, into the
   records folder WORK/records, and submission.json from the logs;
3. report: loss-curve PNGs and the results table (also in the folder's README.md);
4. verify: ``python -m verify`` on the folder (exit code: the verifier's).

Re-running reuses the data and skips complete seeds; ``--force`` rebuilds and re-runs everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from pgolf.errors import PgolfError

DEFAULT_SCRIPT = "submission/train_gpt.py"
META = dict(author="pgolf demo", github_id="pgolf-demo",
            name="Demo: tiny model on embedded stdlib text (CPU)",
            blurb="Produced by `python -m pgolf demo`: PRESET=tiny on CPU, a vocab-1024 CaseOps "
                  "SentencePiece tokenizer trained on Python's own documentation. Not a challenge "
                  "submission; it shows the pipeline.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="./runs/demo", help="work folder (default ./runs/demo)")
    p.add_argument("--script", default=DEFAULT_SCRIPT,
                   help=f"training script (default {DEFAULT_SCRIPT}, packed first when missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 314, 999])
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--plain", action="store_true", help="plain data (no CaseOps transform, no byte sidecars)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="K=V",
                   help="extra environment for the runs (after PRESET=tiny)")
    p.add_argument("--force", action="store_true", help="rebuild the data and re-run every seed")
    p.add_argument("--no-verify", action="store_true", help="skip the verifier")
    return p


def prepare_data(root: str, vocab_size: int, force: bool, caseops: bool = True) -> tuple[str, str]:
    """(dataset dir, tokenizer path) of the embedded corpus under ``root``, built when needed."""
    from pgolf.corpus import default_documents
    from pgolf.dataset import build_dataset, dataset_name
    from pgolf.tokenizer import tokenizer_filename

    ds = os.path.join(root, "datasets", dataset_name(vocab_size, caseops))
    tok = os.path.join(root, "tokenizers", tokenizer_filename(vocab_size, caseops))
    info = os.path.join(ds, "info.json")
    if not force and os.path.isfile(info) and os.path.isfile(tok):
        try:
            with open(info, encoding="utf-8") as f:
                if json.load(f).get("source", "").startswith("embedded"):
                    print(f"== data: reusing {ds}")
                    return ds, tok
        except (OSError, ValueError):
            pass
    print(f"== data: building the {'CaseOps ' if caseops else ''}tokenizer and shards from the embedded text")
    built = build_dataset(default_documents(), root, vocab_size, force=True, caseops=caseops,
                          source="embedded: pydoc_data.topics + stdlib docstrings")
    sidecar = f" ({built.val_bytes:,} bytes of original text in the byte sidecar)" if caseops else ""
    print(f"   {built.train_tokens:,} train tokens, {built.val_tokens:,} val tokens{sidecar} -> {ds}")
    return built.dataset_dir, built.tokenizer_path


def ensure_script(script: str) -> str:
    if os.path.isfile(script):
        return script
    if os.path.normpath(script) != os.path.normpath(DEFAULT_SCRIPT):
        raise PgolfError(f"{script}: training script not found")
    print(f"== {script} missing: packing it from trainer/ (python -m pgolf pack)")
    try:
        from pgolf.pack import cli as pack_cli
    except ImportError as e:
        raise PgolfError(f"{script}: not found, and pgolf.pack is unavailable to build it ({e})") from None
    rc = pack_cli([])
    if rc or not os.path.isfile(script):
        raise PgolfError(f"{script}: `python -m pgolf pack` failed (exit {rc})")
    return script


def main(argv: list[str] | None = None) -> int:
    from pgolf import record, report_cmd

    args = build_parser().parse_args(argv)
    work = os.path.abspath(args.work)
    records = os.path.join(work, "records")
    script = ensure_script(args.script)
    ds, tok = prepare_data(os.path.join(work, "data"), args.vocab_size, args.force, caseops=not args.plain)

    print(f"== record: seeds {' '.join(map(str, args.seeds))} -> {records}", flush=True)
    rec_args = ["--out", records, "--script", script, "--nproc", str(args.nproc), "--seeds",
                *map(str, args.seeds), "--data-path", ds, "--tokenizer-path", tok,
                "--vocab-size", str(args.vocab_size), "--env", "PRESET=tiny",
                # one thread per run: a toy model gains nothing from more, and two OpenMP threads on
                # a busy 2-core machine made each step ~10x slower (spin-waiting), measured here
                "OMP_NUM_THREADS=1", *args.env]
    for k, v in META.items():
        rec_args += [f"--{k.replace('_', '-')}", v]
    if args.force:
        rec_args.append("--force")
    record.main(rec_args)

    print("== report", flush=True)
    report_cmd.main([records])

    rc = 0
    if not args.no_verify:
        # the tokenizer is not an official one: give the verifier it and the val shards to recount bytes
        cmd = [sys.executable, "-m", "verify", records, "--data", ds, "--tokenizer", tok]
        print(f"== verify: python -m verify {records} --data {ds} --tokenizer {tok}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        rc = proc.returncode
    print(f"\nrecords folder: {records}")
    if rc:
        print(f"the verifier reported a FAIL (exit {rc})")
    return rc
