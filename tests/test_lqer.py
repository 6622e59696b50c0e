"""LQER (trainer/quant.py): the grouped factor code, the choice of tensors, the error it removes on
trained weights, and its round trip through the artifact."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest_quant import TinyGPT, qconfig, synthetic_batch, train_tiny

from trainer.artifact import encode_artifact, load_artifact
from trainer.quant import (
    QTensor,
    add_lqer_,
    collect_hessians,
    dequantize_groups,
    dequantize_into,
    dequantize_state_dict,
    dequantize_tensor,
    hessian_error,
    quant_summary,
    quantize_gptq,
    quantize_groups,
    quantize_model,
    row_scales,
)


@pytest.fixture(scope="module")
def trained():
    model = train_tiny(steps=100)
    batches = [synthetic_batch(torch.Generator().manual_seed(100 + i)) for i in range(8)]  # training data
    return model, collect_hessians(model, batches)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_group_code_within_half_a_step_and_in_range(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 256, generator=g) * torch.tensor([[1.0], [30.0], [0.01], [0.0]])
    q, s = quantize_groups(x, bits, 64)
    half = 2 ** (bits - 1)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.numel() == 4 * 256 // 64
    assert int(q.min()) >= -half and int(q.max()) <= half - 1
    assert int(q.min()) == -half or int(q.max()) == half - 1  # the asymmetric range is used
    step = s.float().repeat_interleave(64).view(4, 256)
    # half a step, plus the fp16 rounding of the scale at the largest value (half steps out)
    assert bool(((dequantize_groups(q, s) - x).abs() <= step * (0.5 + half * 2.0 ** -10) + 1e-12).all())
    assert bool((q[3] == 0).all()) and bool(torch.isfinite(s.float()).all())  # an all-zero group
    # a group size that does not divide the row: one group per row
    q2, s2 = quantize_groups(torch.randn(3, 100, generator=g), bits, 64)
    assert s2.numel() == 3 and q2.shape == (3, 100)


def test_lqer_lowers_the_reconstruction_error_of_trained_weights(trained):
    model, hess = trained
    kw = dict(matrix_bits=4, mlp_bits=4, embed_bits=5, attn_clip_sigmas=6.0, mlp_clip_sigmas=6.0,
              embed_clip_sigmas=6.0)
    plain = quantize_model(qconfig(**kw), model, hess)
    lq = quantize_model(qconfig(lqer_rank=4, lqer_top_k=3, **kw), model, hess)
    sd = model.state_dict()
    deq_p, deq_l = dequantize_state_dict(plain), dequantize_state_dict(lq)
    err = {n: float((sd[n].float() - deq_p[n].float()).norm()) for n, t in plain.tensors.items()
           if t.kind == "int"}
    top3 = set(sorted(err, key=lambda n: -err[n])[:3])
    assert {n for n, t in lq.tensors.items() if t.lqer_rank} == top3 == set(lq.meta["lqer"]["tensors"])
    for n, t in lq.tensors.items():
        if t.kind == "int":  # LQER leaves the integer weights alone
            assert torch.equal(t.q, plain.tensors[n].q) and torch.equal(t.scale, plain.tensors[n].scale)
    for n in top3:
        t = lq.tensors[n]
        rows, cols = t.q.shape
        assert t.lqer_a.shape == (4, rows) and t.lqer_b.shape == (4, cols) and t.lqer_bits == 4
        assert t.lqer_a_scale.numel() == 4 * rows // 64 and t.lqer_b_scale.numel() == 4 * cols // 64
        e_l = float((sd[n].float() - deq_l[n].float()).norm())
        assert e_l < 0.97 * err[n], (n, e_l, err[n])
    h_p = sum(hessian_error(sd[n], deq_p[n], hess.get(n)) for n in top3)
    h_l = sum(hessian_error(sd[n], deq_l[n], hess.get(n)) for n in top3)
    assert h_l < h_p
    # and the network's outputs move less
    x, _ = synthetic_batch(torch.Generator().manual_seed(999), batch=64)

    def out_mse(qm):
        m = copy.deepcopy(model)
        dequantize_into(m, qm)
        with torch.no_grad():
            return float(((m(x) - model(x)) ** 2).mean())

    assert out_mse(lq) < out_mse(plain)
    assert any("+lqer(r4,int4)" in line for line in quant_summary(lq))


def test_lqer_on_structured_full_width_weights():
    """An MLP-shaped [2048, 512] matrix with heavy tails (values clipped at k = 11.5 sigma) and a
    few strong directions, GPTQ int6 on a correlated-input Hessian: rank 4 lowers the error (the
    plain SVD minimizes the Frobenius norm, as PR #1797 does, not the Hessian-weighted one)."""
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    rows, cols = 2048, 512
    w = torch.distributions.StudentT(2.5).sample((rows, cols)) * 0.02
    w += (torch.randn(rows, 4, generator=g) @ torch.randn(4, cols, generator=g)) * 0.01
    x = torch.randn(2048, cols, generator=g) @ (torch.eye(cols) + 0.05 * torch.randn(cols, cols, generator=g))
    H = x.T @ x / x.shape[0]
    s = row_scales(w, 6, 11.5)
    q = quantize_gptq(w, H, s, 6)
    t = QTensor("blocks.0.mlp.fc.weight", "mlp", "int", (rows, cols), torch.float32, bits=6, q=q,
                scale=s.half())
    before = float((w - dequantize_tensor(t)).norm())
    add_lqer_(t, w, rank=4, bits=4, group=64)
    after = float((w - dequantize_tensor(t)).norm())
    assert after < 0.99 * before


@pytest.mark.parametrize("codec", ["brotli", "pergroup"])
def test_lqer_round_trips_through_the_artifact(trained, tmp_path, codec):
    model, hess = trained
    qm = quantize_model(qconfig(lqer_rank=2, lqer_top_k=2, lqer_group=16), model, hess)
    enc = encode_artifact(qm, codec, stream_codec="brotli" if codec == "pergroup" else None)
    assert enc.class_bytes["lqer"] > 0
    path = tmp_path / "m.ptz"
    path.write_bytes(enc.blob)
    back = load_artifact(str(path))
    for n, t in qm.tensors.items():
        u = back.tensors[n]
        assert u.lqer_bits == t.lqer_bits and u.lqer_rank == t.lqer_rank
        for f in ("lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale"):
            a, b = getattr(t, f), getattr(u, f)
            assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and torch.equal(a, b)))
    m1, m2 = copy.deepcopy(model), TinyGPT()
    dequantize_into(m1, qm)
    dequantize_into(m2, back)
    x, _ = synthetic_batch(torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))


def test_lqer_settings_are_checked(trained):
    model, hess = trained
    with pytest.raises(ValueError, match="LQER_FACTOR_BITS=9"):
        quantize_model(qconfig(lqer_rank=4, lqer_factor_bits=9), model, hess)
    off = quantize_model(qconfig(lqer_rank=0), model, hess)
    assert "lqer" not in off.meta and not any(t.lqer_rank for t in off.tensors.values())
    big = quantize_model(qconfig(lqer_rank=500, lqer_top_k=1), model, hess)  # rank capped by the shape
    (t,) = [t for t in big.tensors.values() if t.lqer_rank]
    assert t.lqer_rank == min(t.q.shape)
