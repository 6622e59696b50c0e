"""``pgolf record``: run each seed through torchrun, then write submission.json from the logs.

For every seed: ``torchrun --standalone --nproc_per_node=N DIR/train_gpt.py`` (SCRIPT is copied
into the folder first, so the file that runs is the file submitted) with SEED, RUN_ID=
train_seed{SEED}, OUTPUT_DIR=DIR and ARTIFACT=DIR/train_seed{SEED}.ptz; DATA_PATH, TOKENIZER_PATH,
VOCAB_SIZE, PRESET and the rest pass through from the environment (or ``--env K=V``).

- A seed is complete when its log has the ``final`` event and its artifact exists; complete seeds
  are skipped unless ``--force``. Before a seed runs again, its old log and artifact are moved to
  the scratch folder ``.{DIR}.pgolf/attempts/`` next to DIR (the trainer appends to logs).
- A seed that fails (non-zero exit or no ``final`` event) stops the pipeline by default (on
  8xH100 a crash is usually systematic, and each further seed costs 10+ minutes); ``--keep-going``
  runs the remaining seeds anyway. Completed seeds are never touched; the exit code is 1 and
  submission.json is not (re)written until every requested seed is complete: re-run the same
  command to retry.
- Then submission.json (validated against verify/submission.schema.json first), requirements.txt
  and README.md (created once; later only its marked results section is refreshed) are written.
  Author fields come from flags or DIR/submission.meta.json. The README's commands name the
  challenge's layout (``./data/datasets/...``, ``./data/tokenizers/...``,
  ``records/track_.../NAME``) and the container's mounts, never paths of the machine that ran it.
- Nothing is written before the inputs are checked (script, data, tokenizer, GPUs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import time

from pgolf.errors import PgolfError, os_error_message
from pgolf.fsutil import copy_file, write_text
from pgolf.launch import check_inputs, error_line, parse_env_pairs, run_streamed, torchrun_command
from pgolf.results import existing_images
from pgolf.runs import has_final_event, scratch_dir, seed_files
from pgolf.submission import (
    build,
    load_meta,
    meta_path,
    missing_meta,
    readme_stub,
    requirements_text,
    save_meta,
    validate,
    write_readme,
)

DEFAULT_SEEDS = (42, 314, 999)
DEFAULT_SCRIPT = "submission/train_gpt.py"

# What a reviewer has, for the README's commands: the challenge repository's layout (run from its
# root) and the bundle's image with its mounts (docker/README.md; the entrypoint's defaults).
CHALLENGE_DATASETS = "./data/datasets"
CHALLENGE_TOKENIZERS = "./data/tokenizers"
IMAGE = "pgolf"
CONTAINER_DATA = "/data"
CONTAINER_DATASET = "fineweb10B_sp8192"  # the entrypoint's DATA_PATH default under /data/datasets
CONTAINER_TOKENIZER = "fineweb_8192_bpe.model"  # its TOKENIZER_PATH default under /data/tokenizers
# set per seed by this pipeline, so never part of the user's environment line
PIPELINE_VARS = ("SEED", "RUN_ID", "OUTPUT_DIR", "ARTIFACT", "EVAL_ONLY")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf record", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="the records folder")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--nproc", type=int, default=8, help="processes (GPUs) per run (default 8)")
    p.add_argument("--script", default=DEFAULT_SCRIPT, help=f"training script (default {DEFAULT_SCRIPT})")
    p.add_argument("--force", action="store_true", help="re-run seeds that are already complete")
    p.add_argument("--keep-going", action="store_true", help="after a failed seed, run the others anyway")
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="K=V",
                   help="extra environment for the runs (e.g. PRESET=tiny)")
    p.add_argument("--data-path", help="sets DATA_PATH")
    p.add_argument("--tokenizer-path", help="sets TOKENIZER_PATH")
    p.add_argument("--vocab-size", type=int, help="sets VOCAB_SIZE")
    p.add_argument("--no-gpu-check", action="store_true", help="launch even without enough CUDA GPUs")
    for field in ("author", "github_id", "name", "blurb", "date"):
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, help=f"submission.json {field} "
                       f"(saved to DIR/submission.meta.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out
    if len(set(args.seeds)) != len(args.seeds):
        raise PgolfError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is listed twice")

    explicit = {k: str(v) for k, v in (("DATA_PATH", args.data_path), ("TOKENIZER_PATH", args.tokenizer_path),
                                       ("VOCAB_SIZE", args.vocab_size)) if v is not None}
    explicit.update(parse_env_pairs(args.env))
    env = {**os.environ, **explicit}

    # every check before anything is written (a run without GPUs leaves no folder behind)
    complete = {s for s in args.seeds if _is_complete(out, s)}
    todo = [s for s in args.seeds if args.force or s not in complete]
    if not os.path.isfile(args.script) and not os.path.isfile(os.path.join(out, "train_gpt.py")):
        raise PgolfError(f"{args.script}: training script not found (build it with `python -m pgolf pack`, "
                         f"or pass --script)")
    if todo:
        check_inputs(env, args.nproc, gpu_check=not args.no_gpu_check)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PgolfError(os_error_message(e, out)) from None

    flags = {k: getattr(args, k) for k in ("author", "github_id", "name", "blurb", "date")}
    if any(flags.values()) or not os.path.isfile(meta_path(out)):
        meta = save_meta(out, flags)
    else:
        meta = load_meta(out)
    if missing_meta(meta):
        print(f"note: fill in {', '.join(missing_meta(meta))} in {meta_path(out)} (or pass --author/"
              f"--github-id/--name); submission.json needs them")
    script = _stage_script(args.script, out, kept=[s for s in args.seeds if s not in todo])

    failed: list[tuple[int, str]] = []
    for seed in args.seeds:
        if seed not in todo:
            print(f"== seed {seed}: complete, skipped (--force re-runs it)")
            continue
        ok, why = _run_seed(out, seed, script, args.nproc, env)
        if not ok:
            failed.append((seed, why))
            print(f"== seed {seed}: FAILED: {why}")
            if not args.keep_going:
                break

    done = [s for s in args.seeds if _is_complete(out, s)]
    if failed or len(done) < len(args.seeds):
        left = [s for s in args.seeds if s not in done]
        what = f"seed {failed[0][0]} failed: {failed[0][1]}" if failed else "not every seed completed"
        raise PgolfError(f"{what}; complete and kept: {' '.join(map(str, done)) or 'none'}; not complete: "
                         f"{' '.join(map(str, left))}; re-run the same command to retry (complete seeds are "
                         f"skipped)")
    return write_outputs(out, args.seeds, args.nproc, explicit)


def write_outputs(out: str, seeds: list[int], nproc: int, run_env: dict[str, str] | None = None) -> int:
    """submission.json, requirements.txt, README.md from the complete seeds' logs.

    ``run_env``: the environment given to the runs on top of the caller's (--env, --data-path, ...);
    the README's commands take the data paths, preset and vocabulary from the logs and the rest
    from it.
    """
    meta = load_meta(out)
    sub, runs = build(out, seeds, meta)
    target = os.path.join(out, "submission.json")
    if missing_meta(meta):
        raise PgolfError(f"{meta_path(out)}: {', '.join(missing_meta(meta))} not filled in; all seeds are "
                         f"complete: fill it in and re-run the same command to write {target}")
    validate(sub, target)
    write_text(target, json.dumps(sub, indent=2, ensure_ascii=False) + "\n")
    write_text(os.path.join(out, "requirements.txt"), requirements_text(sub.get("pytorch_version")))
    readme = _write_readme(out, sub, runs, nproc, run_env or {})
    print(f"\nwrote {target}: val_bpb {sub['val_bpb']:.8f} (std {sub['val_bpb_std']:.8f}) over seeds "
          f"{' '.join(map(str, seeds))}; bytes_total {sub['bytes_total']:,}; hardware {sub['hardware']}")
    print(f"README.md: {readme}; requirements.txt written")
    return 0


def _write_readme(out: str, sub: dict, runs: dict, nproc: int, run_env: dict[str, str]) -> str:
    """A new README: the stub with this module's Reproduce section; an existing one: its results only."""
    path = os.path.join(out, "README.md")
    if os.path.isfile(path):
        return write_readme(out, sub, runs, nproc)  # the author's text stays; results refreshed
    stub = readme_stub(sub, runs, nproc, existing_images(out, runs))
    head, sep, _ = stub.partition("\n## Reproduce\n")
    if not sep:
        raise AssertionError("pgolf.submission.readme_stub: no '## Reproduce' section to replace")
    hparams = next((r.hparams for r in runs.values() if r.hparams), {})
    name = os.path.basename(os.path.normpath(os.path.abspath(out)))
    write_text(path, head + "\n" + reproduce_section(name, sub, nproc, hparams, run_env))
    return "written"


def _base(path: object) -> str:
    return os.path.basename(os.path.normpath(path)) if isinstance(path, str) and path.strip() else ""


def reproduce_section(name: str, sub: dict, nproc: int, hparams: dict, run_env: dict[str, str]) -> str:
    """The README's "## Reproduce" section: commands for the challenge's layout and for the image.

    Paths come out relative to the challenge repository's root (``./data/datasets/DS``,
    ``./data/tokenizers/TOK``, ``records/track_T/NAME``) or as the container's mounts
    (``/data/...``, ``/records/...``): of the recording machine's paths only basenames are used.
    """
    seeds = " ".join(str(s) for s in sub["seeds"])
    folder = f"records/track_{sub.get('track', 'unknown')}/{name}"
    parent = os.path.dirname(folder)
    ds = _base(hparams.get("data_path") or run_env.get("DATA_PATH")) or CONTAINER_DATASET
    tok = _base(hparams.get("tokenizer_path") or run_env.get("TOKENIZER_PATH")) or CONTAINER_TOKENIZER
    preset = str(hparams.get("preset") or run_env.get("PRESET") or "")
    vocab = str(hparams.get("vocab_size") or run_env.get("VOCAB_SIZE") or "")
    # the rest of the run's own environment (--env K=V); a value that is a path of the recording
    # machine is left out, and named below the commands
    common = {k: v for k, v in (("PRESET", preset), ("VOCAB_SIZE", vocab)) if v}
    hidden = []
    for k, v in run_env.items():
        if k in ("DATA_PATH", "TOKENIZER_PATH", "PRESET", "VOCAB_SIZE") or k in PIPELINE_VARS:
            continue
        if os.path.isabs(v):
            hidden.append(k)
        else:
            common[k] = v
    host_env = {**common, "DATA_PATH": f"{CHALLENGE_DATASETS}/{ds}",
                "TOKENIZER_PATH": f"{CHALLENGE_TOKENIZERS}/{tok}"}
    box_env = dict(common)
    if (ds, tok) != (CONTAINER_DATASET, CONTAINER_TOKENIZER):
        box_env.update(DATA_PATH=f"{CONTAINER_DATA}/datasets/{ds}",
                       TOKENIZER_PATH=f"{CONTAINER_DATA}/tokenizers/{tok}")
    q = shlex.quote
    gpu = "--gpus all --ipc=host " if preset != "tiny" else ""
    env_line = " ".join(f"{k}={q(v)}" for k, v in host_env.items())
    e_flags = "".join(f" -e {k}={q(v)}" for k, v in box_env.items())
    who = " ".join(f"--{k.replace('_', '-')} {q(str(sub.get(k, '')))}" for k in ("author", "github_id"))
    title = q(f"{sub.get('name') or name} (re-run)")
    rerun = f"{name}_rerun"
    val_mount = f'"$PWD/$f:{CONTAINER_DATA}/datasets/{ds}/${{f##*/}}:ro"'
    note = (f"\nLeft out of the commands: {', '.join(sorted(hidden))} (paths on the machine that recorded "
            f"this run).\n" if hidden else "")
    return f"""## Reproduce

From the root of a checkout of the challenge's repository, with this folder at
`{folder}` and the data in the challenge's layout
(`{CHALLENGE_DATASETS}/{ds}/`, `{CHALLENGE_TOKENIZERS}/{tok}`):

```bash
for SEED in {seeds}; do
  {env_line} \\
  SEED=$SEED RUN_ID=train_seed$SEED \\
    torchrun --standalone --nproc_per_node={nproc} {folder}/train_gpt.py
done
```

The same runs in the bundle's container (image `{IMAGE}`, docker/README.md: data read-only at
`{CONTAINER_DATA}`, records at `/records`), into a new folder `{parent}/{rerun}`:

```bash
docker run --rm {gpu}--user "$(id -u):$(id -g)" \\
  -v "$PWD/data:{CONTAINER_DATA}:ro" -v "$PWD/{parent}:/records"{e_flags} \\
  {IMAGE} record {rerun} --script /records/{name}/train_gpt.py --seeds {seeds} --nproc {nproc} \\
  {who} --name {title}
```

The score from the saved artifacts alone, with no training data and no network (per seed an
eval-only run of `train_gpt.py` on its `.ptz`, val_bpb compared with the log):

```bash
VAL=(); for f in data/datasets/{ds}/fineweb_val_*.bin; do VAL+=(-v {val_mount}); done
docker run --rm {gpu}--network none "${{VAL[@]}}" \\
  -v "$PWD/data/tokenizers/{tok}:{CONTAINER_DATA}/tokenizers/{tok}:ro" \\
  -v "$PWD/{folder}:/records/{name}:ro"{e_flags} \\
  {IMAGE} reproduce {name}
```
{note}
Logs: `train_seed{{SEED}}.log`; compressed models: `train_seed{{SEED}}.ptz`; `submission.json` was written
from the logs by `python -m pgolf record`.
"""


def _is_complete(out: str, seed: int) -> bool:
    f = seed_files(out, seed)
    return has_final_event(f.log) and os.path.isfile(f.artifact)


def _same_content(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _stage_script(script: str, out: str, kept: list[int]) -> str:
    """Copy SCRIPT to DIR/train_gpt.py (the file that runs and is submitted); return that path."""
    target = os.path.join(out, "train_gpt.py")
    if not os.path.isfile(script):
        raise PgolfError(f"{script}: training script not found (build it with `python -m pgolf pack`, "
                         f"or pass --script)")
    if os.path.exists(target) and os.path.samefile(script, target):
        return target
    if os.path.isfile(target) and not _same_content(script, target):
        if kept:
            raise PgolfError(f"{target} differs from {script}, and seeds {' '.join(map(str, kept))} are "
                             f"complete with it: re-run them with --force, or pass --script {target}")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        old = os.path.join(scratch_dir(out), "attempts", f"{stamp}-train_gpt.py")
        os.makedirs(os.path.dirname(old), exist_ok=True)
        shutil.move(target, old)
        print(f"== {target} replaced by {script}; the old one moved to {old}")
    if not os.path.isfile(target):
        copy_file(script, target)
    return target


def _archive(out: str, seed: int, extra: list[str] = ()) -> str | None:
    """Move a seed's log/artifact (and ``extra`` files) out of the folder; return where to.

    The trainer appends to logs, so an old attempt must go before a new one starts; it is moved
    to the scratch folder next to DIR, never deleted.
    """
    f = seed_files(out, seed)
    old = [p for p in (f.log, f.artifact, *extra) if os.path.exists(p)]
    if not old:
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = os.path.join(scratch_dir(out), "attempts", f"{stamp}-seed{seed}")
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(scratch_dir(out), "attempts", f"{stamp}-seed{seed}-{n}")
    try:
        os.makedirs(dest)
        for p in old:
            shutil.move(p, os.path.join(dest, os.path.basename(p)))
    except OSError as e:
        raise PgolfError(os_error_message(e, dest)) from None
    return dest


def _run_seed(out: str, seed: int, script: str, nproc: int, env: dict[str, str]) -> tuple[bool, str]:
    moved = _archive(out, seed)
    if moved:
        print(f"== seed {seed}: earlier attempt moved to {moved}")
    f = seed_files(out, seed)
    run_env = {**env, "SEED": str(seed), "RUN_ID": f"train_seed{seed}", "OUTPUT_DIR": out,
               "ARTIFACT": f.artifact}
    run_env.pop("EVAL_ONLY", None)
    cmd = torchrun_command(script, nproc)
    console = os.path.join(scratch_dir(out), f"train_seed{seed}.console.txt")
    print(f"== seed {seed}: SEED={seed} RUN_ID=train_seed{seed} OUTPUT_DIR={out} {' '.join(cmd[2:])}",
          flush=True)
    t0 = time.time()
    rc, tail = run_streamed(cmd, run_env, console)
    secs = time.time() - t0
    if rc == 0 and _is_complete(out, seed):
        os.unlink(console)
        print(f"== seed {seed}: complete in {secs:.0f} s")
        return True, ""
    what = f"exit code {rc}" if rc else "exit code 0 but no final event in its log or no artifact"
    kept = _archive(out, seed, [console])
    return False, f"{what}: {error_line(tail)}; its log and console output are in {kept}"
