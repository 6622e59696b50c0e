"""submission.json, requirements.txt and the README stub of a records folder, from its logs.

Every number comes from the seeds' logs (parsed by verify/logparse.py) and the files' sizes; the
people-facing fields (author, github_id, name, blurb, optionally date, track and extra keys such as
technique_summary) come from ``DIR/submission.meta.json``, which the user fills in (command-line
flags of ``pgolf record`` are saved there too).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from importlib import metadata

from pgolf.errors import PgolfError
from pgolf.fsutil import write_text
from pgolf.results import BEGIN, END, existing_images, mean_std, replace_section, results_section
from pgolf.runs import load_run, require_score, seed_files
from verify.limits import ARTIFACT_LIMIT_BYTES
from verify.logparse import RunSummary

META_FILE = "submission.meta.json"
META_FIELDS = ("author", "github_id", "name", "blurb")
TRACK = "10min_16mb"
# computed from the logs; the meta file may not set them
COMPUTED = ("val_bpb", "val_bpb_std", "val_loss", "val_loss_std", "seeds", "seed_results", "bytes_total",
            "bytes_code", "hardware", "pytorch_version")


def meta_path(folder: str) -> str:
    return os.path.join(folder, META_FILE)


def load_meta(folder: str) -> dict:
    path = meta_path(folder)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise PgolfError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PgolfError(f"{path}: cannot read ({e})") from None
    if not isinstance(meta, dict):
        raise PgolfError(f"{path}: expected a JSON object")
    bad = [k for k in COMPUTED if k in meta]
    if bad:
        raise PgolfError(f"{path}: sets {', '.join(bad)}, which come from the logs; remove them")
    return meta


def save_meta(folder: str, updates: dict) -> dict:
    """Merge non-empty ``updates`` into the meta file (created with blank fields when missing)."""
    meta = load_meta(folder)
    for k in META_FIELDS:
        meta.setdefault(k, "")
    meta.update({k: v for k, v in updates.items() if v})
    write_text(meta_path(folder), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def missing_meta(meta: dict) -> list[str]:
    return [k for k in ("author", "github_id", "name") if not str(meta.get(k, "")).strip()]


def hardware(runs: list[RunSummary]) -> str:
    kinds = []
    for r in runs:
        n = r.device_count or r.world_size or 1
        name = r.device_name or "unknown device"
        label = f"{n}x{name}"
        if label not in kinds:
            kinds.append(label)
    return "; ".join(kinds)


def build(folder: str, seeds: list[int], meta: dict, today: str | None = None) -> tuple[dict, dict]:
    """(submission dict, {seed: RunSummary}) from the folder's logs and files; checks they agree."""
    script = os.path.join(folder, "train_gpt.py")
    if not os.path.isfile(script):
        raise PgolfError(f"{script}: not found (the script that produced the logs belongs in the folder)")
    code_bytes = os.path.getsize(script)
    runs: dict[int, RunSummary] = {}
    for seed in seeds:
        f = seed_files(folder, seed)
        r = load_run(f.log)
        require_score(r)
        if r.code_bytes is not None and r.code_bytes != code_bytes:
            raise PgolfError(f"{f.log}: logged code size {r.code_bytes} bytes but {script} has {code_bytes}; "
                             f"the seed ran another script (re-run it with --force)")
        on_disk = os.path.getsize(f.artifact) if os.path.isfile(f.artifact) else None
        if on_disk is not None and r.model_bytes is not None and on_disk != r.model_bytes:
            raise PgolfError(f"{f.artifact}: {on_disk} bytes but its log says "
                             f"{r.model_bytes}; the artifact is not the one the log describes")
        runs[seed] = r
    bpb, bpb_std = mean_std([r.val_bpb for r in runs.values()])
    loss, loss_std = mean_std([r.val_loss for r in runs.values()])
    totals = [r.total_bytes if r.total_bytes is not None else code_bytes + (r.model_bytes or 0)
              for r in runs.values()]
    seed_results = {}
    for seed, r in runs.items():
        entry = {"val_loss": round(r.val_loss, 8), "val_bpb": round(r.val_bpb, 8),
                 "artifact_bytes": totals[list(runs).index(seed)]}
        if r.steps is not None:
            entry["steps"] = int(r.steps)
        if r.train_time_ms is not None:
            entry["train_time_s"] = round(r.train_time_ms / 1000, 3)
        if r.eval_time_ms is not None:
            entry["eval_time_s"] = round(r.eval_time_ms / 1000, 3)
        seed_results[str(seed)] = entry
    sub = {
        "author": meta.get("author", ""), "github_id": meta.get("github_id", ""),
        "name": meta.get("name", ""), "blurb": meta.get("blurb", ""),
        "date": meta.get("date") or today or dt.datetime.now(dt.UTC).date().isoformat(),
        "track": meta.get("track", TRACK),
        "val_bpb": round(bpb, 8), "val_bpb_std": round(bpb_std, 8),
        "val_loss": round(loss, 8), "val_loss_std": round(loss_std, 8),
        "seeds": list(seeds), "seed_results": seed_results,
        "bytes_total": max(totals), "bytes_code": code_bytes,
        "hardware": hardware(list(runs.values())),
    }
    torch_versions = sorted({r.torch_version for r in runs.values() if r.torch_version})
    if torch_versions:
        sub["pytorch_version"] = ", ".join(torch_versions)
    for k, v in meta.items():  # extra fields the user added (technique_summary, ...)
        sub.setdefault(k, v)
    return sub, runs


def validate(sub: dict, where: str) -> None:
    from verify.schema import validate_submission

    errors = validate_submission(sub)
    if errors:
        raise PgolfError(f"{where}: would not be valid: {errors[0]}"
                         + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


def requirements_text(torch_version: str | None) -> str:
    def pin(name: str) -> str:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return name

    torch_line = f"torch=={torch_version}" if torch_version and "," not in torch_version else pin("torch")
    return "\n".join([
        "# Python packages of the run (written by `pgolf record`; torch from the logs).",
        "# Install with: pip install -r requirements.txt",
        torch_line, pin("numpy"), pin("sentencepiece"), pin("brotli"), pin("zstandard"),
        "# optional, for the record's speed on H100: FlashAttention 3 (flash_attn_interface), installed",
        "# separately from its wheel; without it the script uses PyTorch's SDPA.",
    ]) + "\n"


def readme_stub(sub: dict, runs: dict[int, RunSummary], nproc: int,
                images: dict[int, str] | None = None, env_note: str = "") -> str:
    seeds = " ".join(str(s) for s in sub["seeds"])
    margin = ARTIFACT_LIMIT_BYTES - sub["bytes_total"]
    return f"""# {sub['name']}

**val_bpb {sub['val_bpb']:.8f}** (sample std {sub['val_bpb_std']:.8f}, {len(runs)} seeds) ·
{sub['bytes_total']:,} bytes at most ({margin:,} under the 16,000,000 limit) · {sub['hardware']}

By {sub['author']} (@{sub['github_id']}), {sub['date']}.

{sub['blurb']}

## Results

{BEGIN}
{results_section(runs, images)}{END}

## Reproduce

```bash
for SEED in {seeds}; do
  {env_note + " " if env_note else ""}SEED=$SEED RUN_ID=train_seed$SEED \\
    torchrun --standalone --nproc_per_node={nproc} train_gpt.py
done
```

Logs: `train_seed{{SEED}}.log`; compressed models: `train_seed{{SEED}}.ptz`; `submission.json` was written
from the logs by `python -m pgolf record`.
"""


def write_readme(folder: str, sub: dict, runs: dict[int, RunSummary], nproc: int, env_note: str = "") -> str:
    """Create README.md, or refresh only its marked results section (the rest is the author's)."""
    path = os.path.join(folder, "README.md")
    images = existing_images(folder, runs)
    if not os.path.isfile(path):
        write_text(path, readme_stub(sub, runs, nproc, images, env_note))
        return "written"
    return update_readme(path, results_section(runs, images))


def update_readme(path: str, section: str) -> str:
    """Replace the marked results section of the README at ``path``; say what happened."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PgolfError(f"{path}: cannot read ({e})") from None
    new = replace_section(text, section)
    if new is None:
        return f"kept as is (no {BEGIN} markers)"
    if new != text:
        write_text(path, new)
    return "results section updated"
