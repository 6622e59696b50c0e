"""MuonEq-R / Muon (fixed and Polar Express Newton-Schulz), the parameter split, and the LR /
momentum schedules with the MIN_LR floor (trainer/optim.py)."""

from __future__ import annotations

import pytest
import torch

from trainer.config import Hyperparameters
from trainer.model import GPT
from trainer.optim import (
    Muon,
    build_optimizers,
    lr_scale_at,
    muon_momentum_at,
    newton_schulz5,
    ns_schedule,
    split_params,
    training_fraction,
)

TINY = {"PRESET": "tiny", "VOCAB_SIZE": "128", "MODEL_DIM": "64", "NUM_LAYERS": "4"}


def test_newton_schulz_orthogonalises_and_batches():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 64), (32, 96), (96, 32)]:
        G = torch.randn(*shape, generator=g)
        X = newton_schulz5(G, steps=5)
        assert X.shape == G.shape
        s = torch.linalg.svdvals(X)
        # the quintic lands singular values near 1 (all but the tiniest of a random square matrix)
        assert s.max() < 1.3 and (s > 0.5).float().mean() > 0.9
        # same directions as the exact polar factor U V^T
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        cos = (X * (U @ Vh)).sum() / (X.norm() * (U @ Vh).norm())
        assert cos > 0.95
    batch = torch.randn(3, 32, 48, generator=g)
    together = newton_schulz5(batch)
    for i in range(3):
        assert torch.allclose(together[i], newton_schulz5(batch[i]), atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (256, 512)])
def test_polar_express_orthogonalises_closer_than_the_fixed_quintic(shape):
    g = torch.Generator().manual_seed(shape[0])
    G = torch.randn(*shape, generator=g)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar, fixed = newton_schulz5(G, 5, kind="polar"), newton_schulz5(G, 5, kind="fixed")
    s = torch.linalg.svdvals(polar)
    assert s.min() > 0.8 and s.max() < 1.2  # every singular value lands near 1 in 5 steps
    assert torch.linalg.svdvals(fixed).min() < 0.75  # the fixed quintic leaves some well below
    cos = (polar * (U @ Vh)).sum() / (polar.norm() * (U @ Vh).norm())
    assert cos > 0.99


def test_polar_express_schedule():
    sched = ns_schedule("polar", 5)
    assert len(sched) == 5 and len(set(sched)) == 5  # a new (a, b, c) every step
    assert sched[0] == pytest.approx((8.156554524902461, -22.48329292557795, 15.878769915207462))
    assert ns_schedule("polar", 8) == sched  # more steps run the five (as the record does)
    assert ns_schedule("fixed", 3) == ((3.4445, -4.7750, 2.0315),) * 3
    with pytest.raises(ValueError, match="MUON_NS"):
        ns_schedule("cubic", 5)
    h = Hyperparameters.from_env(TINY)
    assert h.muon_ns == "polar"
    assert build_optimizers(h, GPT(h)).muon.param_groups[0]["ns"] == "polar"


def _one_muon_step(grad: torch.Tensor, row_normalize: bool, wd: float = 0.0) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False, weight_decay=wd, row_normalize=row_normalize)
    p.grad = grad.clone()
    opt.step()
    return p.detach().clone()


def test_row_normalisation_makes_the_update_row_scale_invariant():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(48, 32, generator=g)
    D = torch.rand(48, 1, generator=g) * 10 + 0.1  # positive per-row scales
    assert torch.allclose(_one_muon_step(G, True), _one_muon_step(G * D, True), atol=1e-5)
    assert not torch.allclose(_one_muon_step(G, False), _one_muon_step(G * D, False), atol=1e-3)


def test_muon_scales_tall_matrices_and_decays_weights():
    g = torch.Generator().manual_seed(2)
    tall = _one_muon_step(torch.randn(128, 32, generator=g), False)
    wide = _one_muon_step(torch.randn(32, 128, generator=g), False)
    # RMS of an orthogonal update is 1/sqrt(max dim); tall ones get sqrt(rows/cols) on top
    assert tall.pow(2).mean().sqrt() / wide.pow(2).mean().sqrt() == pytest.approx(2.0, rel=0.15)
    p = torch.nn.Parameter(torch.ones(16, 16))
    opt = Muon([p], lr=0.5, momentum=0.9, weight_decay=0.2)
    p.grad = torch.zeros(16, 16)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((16, 16), 1 - 0.5 * 0.2))


def test_muon_momentum_is_nesterov():
    p = torch.nn.Parameter(torch.zeros(8, 8))
    opt = Muon([p], lr=1.0, momentum=0.5)
    g1 = torch.randn(8, 8)
    p.grad = g1.clone()
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert torch.allclose(buf, g1)
    p2 = torch.nn.Parameter(torch.zeros(8, 8))
    ref = Muon([p2], lr=1.0, momentum=0.0, nesterov=False)
    p2.grad = g1 + 0.5 * g1  # nesterov: g + momentum * buf
    ref.step()
    assert torch.allclose(p.detach(), p2.detach(), atol=1e-6)


def test_parameter_split_covers_everything_once():
    h = Hyperparameters.from_env({**TINY, "BIGRAM_HASH_BUCKETS": "64", "SMEAR_GATE": "1", "GATED_ATTN": "1",
                                  "TIE_EMBEDDINGS": "0"})
    m = GPT(h)
    groups = split_params(m)
    names = [n for g in groups.values() for n, _ in g]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    matrix = {n for n, _ in groups["matrix"]}
    assert all(n.startswith("blocks.") or n == "bigram.proj.weight" for n in matrix)
    assert "blocks.0.attn.c_q.weight" in matrix and "blocks.3.mlp.proj.weight" in matrix
    assert "bigram.proj.weight" in matrix
    assert not any("gate" in n or "resid_mix" in n for n in matrix)
    assert {n for n, _ in groups["embed"]} == {"tok_emb.weight", "bigram.embed.weight"}
    assert [n for n, _ in groups["head"]] == ["lm_head.weight"]
    scalar = {n for n, _ in groups["scalar"]}
    assert "skip_weights" in scalar
    # the 1.0611 stack's small tensors go to AdamW, as in the record
    assert {"blocks.0.attn.out_gate.weight", "blocks.3.lane_post", "blocks.3.lane_resid", "smear.proj.weight",
            "smear.lam"} <= scalar


def test_record_and_baseline_optimizers():
    m = GPT(Hyperparameters.from_env(TINY))
    rec = build_optimizers(Hyperparameters.from_env(TINY), m)
    kinds = [type(o).__name__ for o in rec.optimizers]
    assert kinds == ["AdamW", "Muon", "AdamW"]
    assert rec.muon.param_groups[0]["row_normalize"] and rec.muon.param_groups[0]["weight_decay"] == 0.095
    hb = Hyperparameters.from_env({**TINY, "OPTIMIZER": "baseline"})
    base = build_optimizers(hb, m)
    assert [type(o).__name__ for o in base.optimizers] == ["Adam", "Muon", "Adam"]
    assert not base.muon.param_groups[0]["row_normalize"] and base.muon.param_groups[0]["weight_decay"] == 0
    base.set_lr_scale(0.5)
    assert base.muon.param_groups[0]["lr"] == pytest.approx(hb.matrix_lr * 0.5)
    assert base.optimizers[0].param_groups[0]["lr"] == pytest.approx(hb.tied_embed_lr * 0.5)
    with pytest.raises(ValueError, match="OPTIMIZER"):
        build_optimizers(Hyperparameters.from_env({**TINY, "OPTIMIZER": "sgd"}), m)


def test_one_training_step_lowers_the_loss():
    h = Hyperparameters.from_env(TINY)
    torch.manual_seed(0)
    m = GPT(h)
    opt = build_optimizers(h, m)
    x = torch.randint(0, 128, (4, 32))
    y = torch.roll(x, -1, 1)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = m(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_lr_schedule_and_progress():
    assert lr_scale_at(0.0, 0.72) == 1.0
    assert lr_scale_at(0.27, 0.72) == 1.0
    assert lr_scale_at(0.28, 0.72) == pytest.approx(1.0)
    assert lr_scale_at(0.64, 0.72) == pytest.approx(0.5)
    assert lr_scale_at(1.0, 0.72) == 0.0
    assert lr_scale_at(0.99, 0.0) == 1.0
    # by steps without a cap, by wallclock against the cap (after the reserve) with one
    assert training_fraction(50, 200, 1e9, None) == 0.25
    assert training_fraction(50, 200, 294_000.0, 588_000.0) == 0.5
    assert training_fraction(50, 200, 700_000.0, 588_000.0) == 1.0


def test_min_lr_floor():
    fracs = [i / 1000 for i in range(1001)]
    scales = [lr_scale_at(f, 0.85, 0.1) for f in fracs]
    assert min(scales) == pytest.approx(0.1) and all(sc >= 0.1 for sc in scales)
    assert lr_scale_at(0.1, 0.85, 0.1) == 1.0  # before the warmdown
    assert lr_scale_at(0.575, 0.85, 0.1) == pytest.approx(0.5)  # on the line above the floor
    assert lr_scale_at(0.95, 0.85, 0.1) == pytest.approx(0.1)  # the line is lower: the floor holds
    assert lr_scale_at(1.0, 0.85, 0.0) == 0.0
    assert all(a >= b for a, b in zip(scales, scales[1:]))  # never rises
    assert Hyperparameters.from_env({}).min_lr == 0.1
    assert Hyperparameters.from_env({"PRESET": "pr1493"}).min_lr == 0


def test_muon_momentum_warmup():
    h = Hyperparameters.from_env({"PRESET": "pr1493"})
    assert muon_momentum_at(h, 0) == pytest.approx(0.92)
    assert muon_momentum_at(h, 750) == pytest.approx(0.955)
    assert muon_momentum_at(h, 1500) == pytest.approx(0.99)
    assert muon_momentum_at(h, 10_000) == pytest.approx(0.99)
