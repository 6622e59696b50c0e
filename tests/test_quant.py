"""trainer/quant.py on a tiny trained stand-in GPT: GPTQ vs round-to-nearest, storage classes
(per-class clips and bits, int8 gates, the default class and its report), Hessians, the clip
search and ±1 pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest_quant import TinyGPT, qconfig, synthetic_batch, train_tiny

from trainer.quant import (
    QuantConfig,
    classify_tensor,
    collect_hessians,
    dequantize_into,
    dequantize_state_dict,
    entropy_bits,
    hessian_error,
    prune_candidates,
    quant_summary,
    quantize_gptq,
    quantize_model,
    quantize_rtn,
    row_scales,
    search_clip_sigmas,
    tensor_class,
)


def train_batches(n: int = 8):
    """Calibration batches: drawn from the training distribution, seeds apart from the eval batch."""
    return [synthetic_batch(torch.Generator().manual_seed(100 + i)) for i in range(n)]


@pytest.fixture(scope="module")
def trained():
    model = train_tiny(steps=200)
    return model, collect_hessians(model, train_batches())


@pytest.fixture(scope="module")
def held_out():
    return synthetic_batch(torch.Generator().manual_seed(999), batch=64)


def output_mse(model, qm, x) -> float:
    q = copy.deepcopy(model)
    dequantize_into(q, qm)
    with torch.no_grad():
        return float(((q(x) - model(x)) ** 2).mean())


@pytest.mark.parametrize("bits, k", [(6, 12.85), (6, 6.0), (5, 6.0), (4, 3.0)])
def test_gptq_beats_round_to_nearest(trained, held_out, bits, k):
    model, hess = trained
    kw = dict(matrix_bits=bits, mlp_bits=bits, embed_bits=bits, matrix_clip_sigmas=k, mlp_clip_sigmas=k,
              embed_clip_sigmas=k)
    q_gptq = quantize_model(qconfig(gptq=True, **kw), model, hess)
    q_rtn = quantize_model(qconfig(gptq=False, **kw), model, hess)
    assert {t.method for t in q_gptq.tensors.values() if t.kind == "int"} == {"gptq"}
    assert {t.method for t in q_rtn.tensors.values() if t.kind == "int"} == {"rtn"}
    e_gptq, e_rtn = output_mse(model, q_gptq, held_out[0]), output_mse(model, q_rtn, held_out[0])
    assert e_gptq < 0.9 * e_rtn, (e_gptq, e_rtn)
    # and the objective GPTQ minimizes, summed over the layers, on the calibration Hessians
    sd = model.state_dict()
    deq_g, deq_r = dequantize_state_dict(q_gptq), dequantize_state_dict(q_rtn)
    hg = sum(hessian_error(sd[n], deq_g[n], H) for n, H in hess.items())
    hr = sum(hessian_error(sd[n], deq_r[n], H) for n, H in hess.items())
    assert hg < hr


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_round_to_nearest_within_half_a_step(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(48, 80, generator=g) * torch.rand(48, 1, generator=g)
    w[3, 7] = 40.0  # an outlier gets clipped
    w[5] = 0.0  # an all-zero row keeps a usable scale
    qmax = 2 ** (bits - 1) - 1
    s = row_scales(w, bits, 4.0)
    assert torch.equal(s, s.half().float()) and bool((s > 0).all())
    q = quantize_rtn(w, s, bits)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= qmax
    w_hat = q.float() * s[:, None]
    inside = w.abs() <= qmax * s[:, None]
    err = (w - w_hat).abs()
    assert bool((err[inside] <= s[:, None].expand_as(w)[inside] / 2 * (1 + 1e-6)).all())
    assert int(q[3, 7]) == qmax and bool((q[5] == 0).all())
    # GPTQ with an identity Hessian has no cross terms to exploit: it is round-to-nearest
    assert torch.equal(quantize_gptq(w, torch.eye(80), s, bits), q)
    # and with a real Hessian it stays in range
    x = torch.randn(500, 80, generator=g) @ torch.randn(80, 80, generator=g)
    qg = quantize_gptq(w, x.T @ x / 500, s, bits, block_size=32)
    assert int(qg.abs().max()) <= qmax


def test_classes_bits_and_storage(trained):
    model, hess = trained
    qm = quantize_model(qconfig(mlp_bits=5, fp16_tensors="blocks.1.attn.c_k"), model, hess)
    t = qm.tensors
    assert tensor_class("blocks.0.attn.c_q.weight", model.blocks[0].attn.c_q.weight) == "attn"
    assert t["blocks.0.attn.c_q.weight"].bits == 6 and t["blocks.0.attn.c_q.weight"].cls == "attn"
    assert t["blocks.0.mlp.fc.weight"].bits == 5 and int(t["blocks.0.mlp.fc.weight"].q.abs().max()) <= 15
    assert t["tok_emb.weight"].bits == 8 and t["tok_emb.weight"].cls == "embed"
    assert t["tok_emb.weight"].method == "gptq"  # its Hessian is lm_head's input
    kept = t["blocks.1.attn.c_k.weight"]
    assert kept.kind == "raw" and kept.data.dtype == torch.float16 and kept.cls == "attn"
    gain = t["blocks.0.attn.q_gain"]
    assert gain.kind == "raw" and gain.cls == "small" and gain.data.dtype == torch.float16
    buf = t["pos_table"]  # buffers are stored exactly
    assert buf.data.dtype == torch.float32 and torch.equal(buf.data, model.pos_table)
    assert all(t[n].scale.dtype == torch.float16 for n in t if t[n].kind == "int")
    sd = dequantize_state_dict(qm)
    assert set(sd) == set(model.state_dict()) and sd["tok_emb.weight"].dtype == torch.float32
    assert any("gptq (int5)" in line for line in quant_summary(qm))
    with pytest.raises(ValueError, match="FP16_TENSORS pattern 'blocks.9.nothing' matches no tensor"):
        quantize_model(qconfig(fp16_tensors="blocks.9.nothing"), model, hess)
    with pytest.raises(ValueError, match="between 2 and 8"):
        QuantConfig.from_hparams(qconfig(mlp_bits=9))


def test_gptq_off_and_missing_hessians_use_round_to_nearest(trained):
    model, hess = trained
    rtn = quantize_model(qconfig(gptq=False), model, hess)
    none = quantize_model(qconfig(), model, None)
    for name, t in rtn.tensors.items():
        if t.kind == "int":
            assert t.method == "rtn" and torch.equal(t.q, none.tensors[name].q)


def test_hessians_match_the_layer_inputs(trained):
    model, hess = trained
    names = {f"blocks.{i}.{m}.weight" for i in range(2)
             for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}
    assert set(hess) == names | {"tok_emb.weight"}
    seen = []
    h = model.blocks[1].mlp.proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 256)))
    try:
        with torch.no_grad():
            for x, _ in train_batches():
                model(x)
    finally:
        h.remove()
    X = torch.cat(seen)
    torch.testing.assert_close(hess["blocks.1.mlp.proj.weight"], X.T @ X / X.shape[0], rtol=1e-4, atol=1e-5)
    H = hess["tok_emb.weight"]
    assert H.shape == (64, 64) and torch.allclose(H, H.T)
    assert float(torch.linalg.eigvalsh(H.double()).min()) > -1e-6
    with pytest.raises(ValueError, match="no calibration batches"):
        collect_hessians(model, [])


def test_clip_search_keeps_lowest_error(trained):
    model, hess = trained
    cands = {"attn": [4.0, 12.85, 30.0], "embed": [10.0, 20.0]}
    best, table = search_clip_sigmas(qconfig(), model, hess, cands)
    for cls, ks in cands.items():
        errs = {k: table[cls][k]["error"] for k in ks}
        assert best[cls] == min(errs, key=errs.get)
    bpv = [table["attn"][k]["bits_per_value"] for k in cands["attn"]]
    assert bpv[0] > bpv[1] > bpv[2]  # a wider clip: fewer bits per value
    qm = quantize_model(qconfig(), model, hess, clip_sigmas=best)
    assert qm.tensors["blocks.0.attn.c_q.weight"].clip_sigmas == best["attn"]
    assert qm.meta["clip_sigmas"]["attn"] == best["attn"]


def test_pruning_sets_the_cheapest_ones_to_zero(trained):
    model, hess = trained
    qm = quantize_model(qconfig(), model, hess)
    qm0 = copy.deepcopy(qm)

    def count(v):
        return sum(int((t.q == v).sum()) for t in qm.tensors.values() if t.kind == "int")

    ones, zeros = count(1) + count(-1), count(0)
    cands = prune_candidates(qm, hess)
    assert len(cands) == ones and bool((cands.cost[1:] >= cands.cost[:-1]).all())
    n = len(cands) // 3
    e_before = sum(entropy_bits(t.q) for t in qm.tensors.values() if t.kind == "int")
    assert cands.prune(qm, n) == n and qm.meta["pruned_values"] == n
    assert count(1) + count(-1) == ones - n and count(0) == zeros + n
    e_after = sum(entropy_bits(t.q) for t in qm.tensors.values() if t.kind == "int")
    # the proxy predicts the real entropy of the pruned values (tensors without ±1 cancel out)
    assert abs((cands.entropy_bits(0) - cands.entropy_bits(n)) - (e_before - e_after)) < 1e-6 * e_before
    # every pruned value costs no more than any value still left
    t0 = qm.tensors[cands.names[int(cands.tensor_ids[n])]]
    assert int(t0.q.view(-1)[cands.flat_index[n]].abs()) == 1
    assert cands.prune(qm, n // 2) == n // 2  # restores the ±1 values beyond n // 2
    assert count(1) + count(-1) == ones - n // 2 and count(0) == zeros + n // 2
    cands.prune(qm, 0)
    assert all(torch.equal(t.q, qm0.tensors[k].q) for k, t in qm.tensors.items() if t.kind == "int")
    need = cands.count_for_saving(e_before)  # more than everything there is
    assert need == len(cands) + 1


def test_real_gpt():
    import trainer.model as model_mod
    from trainer.config import Hyperparameters

    h = Hyperparameters.from_env({"PRESET": "tiny", "VOCAB_SIZE": "64"})
    torch.manual_seed(0)
    model = model_mod.GPT(h).float()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 64, (2, 32), generator=g), torch.randint(0, 64, (2, 32), generator=g))]
    hess = collect_hessians(model, batches)
    assert "tok_emb.weight" in hess and any(k.endswith("attn.c_q.weight") for k in hess)
    qm = quantize_model(h, model, hess)
    q2 = copy.deepcopy(model)
    dequantize_into(q2, qm)
    with torch.no_grad():
        assert torch.isfinite(q2(batches[0][0])).all()


def test_stand_in_follows_the_contract():
    m = TinyGPT()
    names = dict(m.named_parameters())
    assert "tok_emb.weight" in names and "blocks.0.attn.c_q.weight" in names and "lm_head.weight" not in names


def test_clip_sigmas_and_bits_per_class(trained):
    model, hess = trained
    m = copy.deepcopy(model)
    m.bigram = torch.nn.Module()
    m.bigram.embed = torch.nn.Embedding(1024, 64)  # a known "other" matrix (BigramHash table)
    qm = quantize_model(qconfig(attn_clip_sigmas=9.0, mlp_clip_sigmas=11.5, embed_clip_sigmas=14.0,
                                matrix_clip_sigmas=20.0, embed_bits=7), m, hess)
    t = qm.tensors
    assert t["blocks.0.attn.c_k.weight"].clip_sigmas == 9.0
    assert t["blocks.0.mlp.proj.weight"].clip_sigmas == 11.5
    assert t["tok_emb.weight"].clip_sigmas == 14.0 and t["tok_emb.weight"].bits == 7
    assert int(t["tok_emb.weight"].q.abs().max()) <= 63
    other = t["bigram.embed.weight"]
    assert other.cls == "other" and other.clip_sigmas == 20.0 and other.bits == 6 and other.method == "rtn"
    # the scale is k * std(row) / qmax with each class's own k
    w = model.blocks[0].attn.c_k.weight.detach()
    torch.testing.assert_close(t["blocks.0.attn.c_k.weight"].scale.float(), row_scales(w, 6, 9.0))
    assert qm.meta["clip_sigmas"] == {"attn": 9.0, "mlp": 11.5, "embed": 14.0, "other": 20.0}
    assert "defaulted" not in qm.meta


@pytest.mark.parametrize("gate_bits", [0, 8])
def test_attention_output_gates_int8_per_row(gate_bits):
    model = TinyGPT(gates=True)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.out_gate.weight.copy_(torch.randn(b.attn.out_gate.weight.shape, generator=g))
    hess = collect_hessians(model, [synthetic_batch(torch.Generator().manual_seed(1))])
    qm = quantize_model(qconfig(gate_bits=gate_bits), model, hess)
    t = qm.tensors["blocks.1.attn.out_gate.weight"]
    w = model.blocks[1].attn.out_gate.weight.detach()
    assert t.cls == "gate" and w.shape == (4, 12)
    if gate_bits == 0:  # fp16 like the other small tensors
        assert t.kind == "raw" and t.data.dtype == torch.float16
        return
    assert t.kind == "int" and t.bits == 8 and t.method == "absmax" and t.scale.dtype == torch.float16
    assert int(t.q.abs().max()) == 127  # no clipping: each row's largest value is +-127
    step = t.scale.float()[:, None]
    assert bool(((t.q.float() * step - w).abs() <= step * (0.5 + 127 * 2.0 ** -10)).all())
    cands = prune_candidates(qm, hess)
    assert "blocks.1.attn.out_gate.weight" not in cands.names  # gates are never pruned
    assert any("absmax (int8): blocks.attn.out_gate.weight" in line for line in quant_summary(qm))
    with pytest.raises(ValueError, match="GATE_BITS=6"):
        QuantConfig.from_hparams(qconfig(gate_bits=6))


def test_unknown_tensors_fall_to_a_default_class_and_are_named(trained):
    model, hess = trained
    m = copy.deepcopy(model)
    m.mystery_vec = torch.nn.Parameter(torch.randn(64))  # unknown small -> fp16
    m.lane_lambdas = torch.nn.Parameter(torch.ones(2, 64))  # a known kind of small control tensor
    m.extra_proj = torch.nn.Parameter(torch.randn(512, 256) * 0.02)  # unknown matrix -> other, int6
    m.register_buffer("big_table", torch.randn(300, 300))  # a buffer: stored exactly, not reported
    qm = quantize_model(qconfig(), m, hess)
    t = qm.tensors
    assert (t["mystery_vec"].cls, t["mystery_vec"].kind, t["mystery_vec"].data.dtype) == ("small", "raw",
                                                                                       torch.float16)
    assert t["extra_proj"].cls == "other" and t["extra_proj"].kind == "int" and t["extra_proj"].bits == 6
    assert t["big_table"].kind == "raw" and t["big_table"].data.dtype == torch.float32
    assert qm.meta["defaulted"] == {"mystery_vec": "small", "extra_proj": "other"}
    (line,) = [x for x in quant_summary(qm) if "default class" in x]
    assert "mystery_vec -> small (float16)" in line and "extra_proj -> other (int6 rtn)" in line
    assert classify_tensor("blocks.3.attn.out_gate.weight", torch.zeros(8, 12)) == ("gate", False)
    assert classify_tensor("parallel_post_lambdas", torch.zeros(2, 512)) == ("small", False)
    assert classify_tensor("blocks.0.new.thing", torch.zeros(3, 8, 4096)) == ("other", True)
