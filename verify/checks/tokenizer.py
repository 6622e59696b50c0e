"""Check 8: a tokenizer other than the official ones must not inflate the byte count.

Statically (verify/bytetables.py): user-defined marker pieces counted as text, byte tables shipped in
``.npz``/``.npy``/JSON or written into the code, and whether the code counts the original bytes from
per-token sidecars (CaseOps-style ``fineweb_val_bytes_*.bin``: legal). With data:

A tokenizer file in the folder (``*.model``) is compared by sha256 with the official SentencePiece
models. When it differs and ``--data`` names the validation shards made with it, the bytes of the
validation text are recomputed with ``trainer.bpb.ByteCounter`` (bytes of each scored target given
its predecessor) and compared with the bytes the logs imply: a pgolf eval event's ``bytes``, else
tokens * val_loss / ln 2 / val_bpb. Without a file or shards the check says what it could not do.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from pathlib import Path

from verify.context import Context
from verify.limits import OFFICIAL_TOKENIZER_NAMES, OFFICIAL_TOKENIZERS
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "tokenizer", 8
RULE = "a non-official tokenizer's byte count of the validation text matches the bytes the logs imply"
REL_TOL = 1e-3  # sliding/TTT phases may drop a partial tail; a miscount is far larger


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def val_pattern(data: str) -> str:
    if any(c in data for c in "*?["):
        return data
    return os.path.join(data, "fineweb_val_*.bin")


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    if ctx.folder is None:
        r.add(SKIP, "no folder")
        return r
    from verify.bytetables import analyse

    for status, text in analyse(ctx.folder, ctx.files, [(f.rel, f.text) for f in ctx.code.scan]):
        r.add(status, text)
    files = [ctx.folder / f for f in ctx.files if f.endswith(".model")]
    named = sorted({os.path.basename(s.tokenizer_path) for s in ctx.logs if s.tokenizer_path})
    unofficial = [n for n in named if n not in OFFICIAL_TOKENIZER_NAMES]
    given = ctx.options.tokenizer
    if not files and given and os.path.basename(given) in unofficial:
        files = [Path(given)]  # the reviewer supplies the tokenizer the logs name
    if not files:
        if r.findings:
            return r
        if unofficial:
            r.add(
                WARN,
                f"the logs name tokenizer(s) {', '.join(unofficial)}, not official and not in the "
                "folder: the byte count cannot be checked (give it with --tokenizer and --data)",
            )
        elif named:
            r.add(
                PASS,
                f"the logs name the official tokenizer {', '.join(named)} (no tokenizer file in the folder)",
            )
        else:
            r.add(SKIP, "no tokenizer file in the folder and none named in the logs")
        return r
    for path in files:
        try:
            digest = sha256_file(path)
        except OSError as e:
            r.add(FAIL, f"{path.name}: cannot read ({e.strerror})")
            continue
        if digest in OFFICIAL_TOKENIZERS:
            r.add(
                PASS, f"{path.name} is the official {OFFICIAL_TOKENIZERS[digest]} (sha256 {digest[:12]}...)"
            )
            continue
        _recount(ctx, r, path, digest)
    return r


def _implied(ctx: Context, n_targets: int) -> list[tuple[str, float]]:
    out = []
    for s in ctx.runs:
        if s.eval_bytes:
            out.append((f"{s.path}:{s.lines.get('val_bpb', '?')} eval bytes", float(s.eval_bytes)))
        elif s.val_loss and s.val_bpb and s.val_bpb > 0 and math.isfinite(s.val_loss):
            n = s.val_tokens or n_targets
            out.append(
                (
                    f"{s.path}:{s.lines.get('val_bpb', '?')} {n} tokens x val_loss {s.val_loss} / ln2 / "
                    f"val_bpb {s.val_bpb}",
                    n * s.val_loss / math.log(2) / s.val_bpb,
                )
            )
    return out


def _recount(ctx: Context, r: CheckResult, path: Path, digest: str) -> None:
    head = f"{path.name} is not an official tokenizer (sha256 {digest[:12]}...)"
    if not ctx.options.data:
        r.add(SKIP, f"{head}: pass --data DIR with the validation shards made with it to recount the bytes")
        return
    pattern = val_pattern(ctx.options.data)
    if not glob.glob(pattern):
        r.add(SKIP, f"{head}: no validation shards match {pattern}")
        return
    try:  # torch and sentencepiece only here: the static path stays fast
        import sentencepiece as spm
        import torch

        from trainer.bpb import ByteCounter
        from trainer.data import ShardError, load_validation_tokens
    except ImportError as e:
        r.add(SKIP, f"{head}: cannot recount ({e})")
        return
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        r.add(FAIL, f"{path.name}: not a loadable SentencePiece model ({str(e).splitlines()[0][:120]})")
        return
    try:
        tokens = load_validation_tokens(pattern)
    except (ShardError, ValueError, OSError) as e:
        r.add(SKIP, f"{head}: cannot read the shards: {e}")
        return
    vocab = int(sp.vocab_size())
    if tokens.numel() < 2 or int(tokens.max()) >= vocab:
        r.add(
            FAIL,
            f"{head}: the shards under {pattern} hold ids up to {int(tokens.max())}, past the "
            f"tokenizer's vocabulary {vocab}: they were not made with it",
        )
        return
    counter = ByteCounter(sp, vocab)
    recount = int(counter.token_bytes(tokens[:-1], tokens[1:]).to(torch.int64).sum())
    implied = _implied(ctx, int(tokens.numel()) - 1)
    if not implied:
        r.add(
            SKIP,
            f"{head}: recounted {recount} bytes over {tokens.numel() - 1} targets, but no log gives "
            "val_loss and val_bpb to compare with",
        )
        return
    for where, b in implied:
        rel = (b - recount) / recount if recount else float("inf")
        msg = (
            f"{head}: recounted {recount} bytes (ByteCounter over {pattern}); "
            f"{where} imply {b:.0f} ({rel:+.3%})"
        )
        r.add(PASS if abs(rel) <= REL_TOL else FAIL, msg)
