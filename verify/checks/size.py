"""Check 4: code bytes (the size of train_gpt.py) + compressed model bytes <= 16,000,000 per seed.

From every log (its total, and its model bytes re-added to the actual size of train_gpt.py), and from
the artifact files when the folder has them (``*.ptz``; matched to a log by name: train_seed42.log <->
train_seed42.ptz, or the artifact name a pgolf log records).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from verify.context import Context
from verify.limits import ARTIFACT_LIMIT_BYTES as LIMIT
from verify.result import FAIL, PASS, SKIP, WARN, CheckResult

ID, NUMBER = "size", 4
RULE = f"code bytes (train_gpt.py) + compressed model bytes <= {LIMIT:,} for every seed"
ARTIFACT_SUFFIXES = (".ptz", ".ptq", ".pt.xz", ".pt.br", ".pt.zst", ".int6", ".int8")


def _verdict(total: int) -> str:
    return PASS if total <= LIMIT else FAIL


def _cmp(total: int) -> str:
    return f"<= {LIMIT}" if total <= LIMIT else f"> {LIMIT} by {total - LIMIT}"


def run(ctx: Context) -> CheckResult:
    r = CheckResult(ID, NUMBER, RULE)
    f = ctx.train_gpt
    code = f.stat().st_size if f is not None else None
    for s in ctx.logs:
        at = lambda k, s=s: f"{s.path}:{s.lines[k]}" if k in s.lines else s.path  # noqa: E731
        if s.total_bytes is not None:
            r.add(_verdict(s.total_bytes), f"{at('total_bytes')} total {s.total_bytes} {_cmp(s.total_bytes)}")
        if (
            s.model_bytes is not None
            and s.code_bytes is not None
            and s.total_bytes is not None
            and s.code_bytes + s.model_bytes != s.total_bytes
        ):
            r.add(WARN, f"{s.path}: total {s.total_bytes} != code {s.code_bytes} + model {s.model_bytes}")
        model, model_at = s.model_bytes, at("model_bytes")
        if model is None and s.total_bytes is not None and s.code_bytes is not None:
            model, model_at = s.total_bytes - s.code_bytes, f"{at('total_bytes')} total - code"
        if model is not None and code is not None:
            t = code + model
            r.add(_verdict(t), f"train_gpt.py {code} + {model_at} model {model} = {t} {_cmp(t)}")
            if s.code_bytes is not None and s.code_bytes != code:
                r.add(
                    WARN,
                    f"{at('code_bytes')} logged code {s.code_bytes} bytes but train_gpt.py is {code} "
                    "bytes: the folder's code is not the code that ran",
                )
        elif s.total_bytes is None and s.val_bpb is not None:
            r.add(WARN, f"{s.path}: no code/model/total size lines")
    for art in _artifacts(ctx):
        size = (ctx.folder / art).stat().st_size
        if code is not None:
            t = code + size
            r.add(_verdict(t), f"train_gpt.py {code} + {art} {size} = {t} {_cmp(t)}")
        s = _log_for(ctx, art)
        if s is not None and s.model_bytes is not None and s.model_bytes != size:
            r.add(
                WARN,
                f"{art} is {size} bytes but {s.path} logged model {s.model_bytes} bytes: "
                "not the artifact that run wrote",
            )
    if r.status == SKIP:
        r.add(SKIP, "no sizes in the logs and no artifact files")
    elif code is None:
        r.add(WARN, "no train_gpt.py: code bytes taken from the logs only")
    return r


def _artifacts(ctx: Context) -> list[str]:
    return [f for f in ctx.files if f.endswith(ARTIFACT_SUFFIXES)]


def _log_for(ctx: Context, art: str):
    stem = PurePosixPath(art).name.split(".")[0]
    for s in ctx.logs:
        if s.artifact_name and PurePosixPath(s.artifact_name).name == PurePosixPath(art).name:
            return s
    for s in ctx.logs:
        if PurePosixPath(s.path).name.split(".")[0] == stem:
            return s
    return None
