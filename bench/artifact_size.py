"""Full-size artifact bytes per preset, on a CPU, through the export's own path.

Builds each preset's model at full size, gives every matrix synthetic weights (no training on a
CPU), then runs what ``trainer/export.py`` runs after calibration: quantize (round-to-nearest: GPTQ
needs Hessians from training batches), ``fit_to_limit`` with the preset's compressor and the
counted code (``submission/train_gpt.py``), and the artifact loader on the bytes. Prints a table:
parameters, model bytes, code bytes, total, headroom, values pruned to fit, and beside it the
artifact size the matching record logged for its trained weights (read from ``../shared/reference``
when present).

Synthetic weights are an estimate, not the record: the bytes depend on the distribution of the
quantized values. ``--weights gaussian`` draws N(0, 1) rows (the quantizer's clips are in row
sigmas, so the scale does not matter); ``--weights student`` draws Student-t rows (df 5), heavier
tails like trained matrices, which put more values near zero after a sigma clip.

    python -m bench.artifact_size --presets pr1855 pr1774 pr1493 --out bench/results/artifact-size-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.accounting import fit_to_limit  # noqa: E402
from trainer.artifact import load_artifact, write_artifact  # noqa: E402
from trainer.config import Hyperparameters  # noqa: E402
from trainer.quant import quantize_model, tensor_class  # noqa: E402
from trainer.train import build_model  # noqa: E402

REFERENCE = REPO.parent / "shared" / "reference"
# preset -> (record, where its logged artifact sizes are)
RECORD_SOURCES = {
    "pr1855": ("1.0611 (PR #1855)", "sota_1.0611/train_seed*.log"),
    "pr1493": ("1.0810 (PR #1493)", "r1493_1.0810/train_seed*.log"),
    "pr1774": ("1.0981 (PR #1774)", "seed1774_1.0981/COMMIT_MESSAGE.txt"),
}
LOGGED_SIZE = re.compile(r"Serialized model quantized\+\w+:\s*([\d,]+) bytes|artifact ([\d,]+) bytes")


def record_sizes(preset: str) -> list[int]:
    """The artifact bytes the record logged per seed (empty when ../shared is absent)."""
    if preset not in RECORD_SOURCES:
        return []
    out: list[int] = []
    for path in sorted(REFERENCE.glob(RECORD_SOURCES[preset][1])):
        for m in LOGGED_SIZE.finditer(path.read_text(errors="replace")):
            out.append(int((m.group(1) or m.group(2)).replace(",", "")))
    return out


@torch.no_grad()
def synthesize_weights(model: torch.nn.Module, kind: str, seed: int) -> int:
    """Every tensor the quantizer stores as integers (attn, mlp, embed, gate and other matrices)
    gets random rows, zero-initialised projections included (a zero matrix would compress to
    nothing); small tensors (norms, scales, lane mixes) keep their init, as they are stored in
    float. Returns the parameter count."""
    rng = np.random.default_rng(seed)
    draw = rng.standard_normal if kind == "gaussian" else lambda size: rng.standard_t(5.0, size)
    for name, p in model.named_parameters():
        if tensor_class(name, p) != "small":
            p.copy_(torch.from_numpy(draw(tuple(p.shape)).astype(np.float32)))
    return sum(p.numel() for p in model.parameters())


def measure(preset: str, kind: str, seed: int, code_path: Path, env: dict[str, str] | None = None) -> dict:
    """One preset's artifact from synthetic weights; ``env``: more hyperparameter overrides."""
    h = Hyperparameters.from_env({**(env or {}), "PRESET": preset, "GPTQ": "0"})
    model = build_model(h, torch.device("cpu")).eval()
    params = synthesize_weights(model, kind, seed)
    model.bake_shared_heads()  # as training ends (trainer/train.py): shared Q/K dims stored identically
    t0 = time.perf_counter()
    qm = quantize_model(h, model, None)
    t1 = time.perf_counter()
    code_bytes = code_path.stat().st_size
    fit = fit_to_limit(qm, None, code_bytes=code_bytes, limit_bytes=h.artifact_limit_bytes,
                       codec=h.compressor)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the bytes load back (codec and checksum)
        path = os.path.join(tmp, "final_model.ptz")
        write_artifact(path, fit.encoded.blob)
        load_artifact(path)
    acc = fit.account
    return dict(preset=preset, weights=kind, params=params, codec=fit.codec, unpruned=fit.unpruned_bytes,
                model=acc.model_bytes, code=acc.code_bytes, total=acc.total_bytes,
                headroom=acc.headroom_bytes, pruned=fit.pruned_values, quant_s=t1 - t0, fit_s=t2 - t1,
                record=record_sizes(preset))


COLUMNS = ("preset", "weights", "params", "codec", "model bytes as quantized", "model bytes fitted",
           "code bytes", "total", "headroom", "values pruned to fit", "quantize / fit (s)",
           "the record's logged artifact bytes (trained weights)")


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        rec = ", ".join(f"{b:,}" for b in r["record"]) or "(../shared absent)"
        if r["preset"] in RECORD_SOURCES and r["record"]:
            rec = f"{RECORD_SOURCES[r['preset']][0]}: {rec}"
        cells = [r["preset"], r["weights"], f"{r['params']:,}", r["codec"], f"{r['unpruned']:,}",
                 f"{r['model']:,}", f"{r['code']:,}", f"{r['total']:,}", f"{r['headroom']:,}",
                 f"{r['pruned']:,}", f"{r['quant_s']:.1f} / {r['fit_s']:.1f}", rec]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["pr1855", "pr1774", "pr1493"])
    ap.add_argument("--weights", nargs="+", choices=["gaussian", "student"], default=["gaussian", "student"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code", type=Path, default=REPO / "submission" / "train_gpt.py",
                    help="the counted code file (default: submission/train_gpt.py)")
    ap.add_argument("--out", type=Path, help="also write the table (with the command and machine) here")
    args = ap.parse_args(argv)
    if not args.code.is_file():
        print(f"{args.code}: counted code file not found", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for preset in args.presets:
        for kind in args.weights:
            rows.append(measure(preset, kind, args.seed, args.code))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        cmd = "python -m bench.artifact_size " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(
            f"# Full-size artifact bytes per preset (CPU, synthetic weights)\n\n"
            f"Command: `{cmd}`  \nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}\n\n{text}\n"
            f"Round-to-nearest quantization with each preset's bits, clips, LQER and gate settings, then the "
            f"export's fit_to_limit and codec; the bytes load back through the artifact loader. Synthetic "
            f"weights, not trained ones: the record's column is its logged size for trained weights.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
