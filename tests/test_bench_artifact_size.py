"""bench/artifact_size.py: the export's quantize -> fit -> encode path on synthetic weights, at the
tiny preset (the full-size run is the benchmark's, not the suite's)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.artifact_size import LOGGED_SIZE, measure, synthesize_weights, table
from trainer.config import Hyperparameters
from trainer.quant import tensor_class
from trainer.train import build_model

CODE = Path(__file__).resolve().parents[1] / "submission" / "train_gpt.py"


def test_synthetic_weights_fill_every_matrix():
    model = build_model(Hyperparameters.from_env({"PRESET": "tiny"}), torch.device("cpu"))
    small = {n: p.clone() for n, p in model.named_parameters() if tensor_class(n, p) == "small"}
    synthesize_weights(model, "student", 0)
    for name, p in model.named_parameters():
        if name in small:  # stored in float: left as initialised
            assert torch.equal(p, small[name]), name
        else:  # quantized: random, zero-initialised projections too
            assert p.std() > 0.5, name
    assert len(small) < sum(1 for _ in model.parameters())


def test_fits_the_limit_and_prunes_when_it_must():
    free = measure("tiny", "gaussian", 0, CODE)
    assert free["pruned"] == 0 and free["total"] == free["code"] + free["model"] <= 16_000_000
    limit = free["total"] - 2_000  # 2 KB too small: the fit must prune values, and land under it
    tight = measure("tiny", "gaussian", 0, CODE, {"ARTIFACT_LIMIT_BYTES": str(limit)})
    assert tight["pruned"] > 0 and tight["total"] <= limit and tight["headroom"] >= 0
    assert "| tiny | gaussian |" in table([tight])


def test_reads_the_records_logged_sizes():
    text = ("Serialized model quantized+pergroup: 15865260 bytes\n"
            "  Seed 42:  quantized BPB 1.12159, artifact 15,996,287 bytes\n")
    assert [int((m.group(1) or m.group(2)).replace(",", "")) for m in LOGGED_SIZE.finditer(text)] == [
        15_865_260, 15_996_287]


def test_shared_head_dims_are_baked_before_quantizing():
    """Shared-specific attention stores its shared Q/K dims identically in every head (as training
    leaves them): the copies must cost next to nothing, as in the record's artifact."""
    plain = measure("tiny", "gaussian", 0, CODE, {"SHARED_SPECIFIC_DIMS": "0"})
    shared = measure("tiny", "gaussian", 0, CODE, {"SHARED_SPECIFIC_DIMS": "8"})
    assert plain["params"] == shared["params"]
    assert plain["unpruned"] - shared["unpruned"] > 1000
