"""The GPT (trainer/model.py) and the attention kernels (trainer/attention.py), on CPU.

The 1.0611 stack's pieces are checked against their definitions in the reference trainer
(shared/reference/sota_1.0611/train_gpt.py): SmearGate with the BOS mask (``_forward_hidden``),
the sparse attention gate (``CausalSelfAttention.forward``), two-lane residuals
(``_parallel_block`` / ``_final_parallel_hidden``), and PR #1774's shared-specific attention
(seed1774_1.0981: ``_tie_shared_weight``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from trainer.attention import attention_backend, causal_attention, select_attention_backend
from trainer.config import Hyperparameters
from trainer.model import (
    GPT,
    SMEAR_BOS_ID,
    HeadSharedLinear,
    SmearGate,
    layer_schedule,
    xsa_remove_self,
)

SMALL = {"PRESET": "tiny", "VOCAB_SIZE": "128", "NUM_LAYERS": "5", "MODEL_DIM": "64", "NUM_HEADS": "4",
         "NUM_KV_HEADS": "2", "ROPE_DIMS": "8", "LOOP_START": "1", "LOOP_END": "2", "NUM_LOOPS": "2",
         "PARALLEL_START_LAYER": "3", "XSA_LAST_N": "5"}

OPTIONS = {
    "record_like": {},
    "12_layers": {"NUM_LAYERS": "12"},
    "mlp_4.5x": {"MLP_MULT": "4.5"},
    "shared_specific": {"SHARED_SPECIFIC_DIMS": "4"},
    "gated_attn": {"GATED_ATTN": "1"},
    "smear_gate": {"SMEAR_GATE": "1"},
    "bigram_hash": {"BIGRAM_HASH_BUCKETS": "97", "BIGRAM_HASH_DIM": "32"},
    "untied": {"TIE_EMBEDDINGS": "0"},
    "one_lane_gptj": {"PARALLEL_LANES": "1"},
    "final_lane_mlp": {"PARALLEL_FINAL_LANE": "mlp"},
    "plain_1493_like": {"PARALLEL_LANES": "1", "SPARSE_ATTN_GATE": "0", "SMEAR_GATE": "0", "VARLEN_ATTN": "0",
                        "FUSED_CE": "0", "FUSED_MLP": "0"},
    "all_options": {"NUM_LAYERS": "6", "MLP_MULT": "4.5", "SHARED_SPECIFIC_DIMS": "4", "GATED_ATTN": "1",
                    "SMEAR_GATE": "1", "BIGRAM_HASH_BUCKETS": "97"},
    "baseline": {"PRESET": "baseline", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
                 "ROPE_DIMS": "16", "VOCAB_SIZE": "128"},
}


@pytest.fixture(autouse=True, scope="module")
def _cpu_attention():
    select_attention_backend(torch.device("cpu"))


def hp(**over) -> Hyperparameters:
    env = dict(SMALL)
    env.update({k: str(v) for k, v in over.items()})
    if env.get("PRESET") == "baseline":
        env = {k: v for k, v in env.items() if k in OPTIONS["baseline"]}
    return Hyperparameters.from_env(env)


def make(seed: int = 0, **over) -> GPT:
    torch.manual_seed(seed)
    return GPT(hp(**over))


def tokens(b=2, t=24, v=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, v, (b, t), generator=g)


def test_contract_shapes_names_and_initial_loss():
    m = make()
    x = tokens()
    logits = m(x)
    assert logits.shape == (2, 24, 128) and logits.dtype == torch.float32
    assert logits.abs().max() <= 30.0  # softcapped
    loss = m(x, tokens(seed=2))
    assert loss.dim() == 0
    assert abs(loss.item() - math.log(128)) < 0.1  # tiny tied init: near-uniform predictions
    names = dict(m.named_parameters())
    for i in range(5):
        for part in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"):
            assert f"blocks.{i}.{part}.weight" in names
    assert "tok_emb.weight" in names
    # every 2-D matrix in the blocks belongs to an nn.Linear
    linear_weights = {id(mod.weight) for mod in m.modules() if isinstance(mod, nn.Linear)}
    for name, p in m.blocks.named_parameters():
        if p.ndim == 2 and not name.endswith(("resid_mix", "lane_post")):  # mixing tables, not matrices
            assert id(p) in linear_weights, name
    # tied head: a submodule with no weight of its own, computing with tok_emb
    assert isinstance(m.lm_head, nn.Module) and not list(m.lm_head.parameters())
    assert not any(k.startswith("lm_head") for k in m.state_dict())
    h = m.hidden(x)
    assert torch.allclose(m.lm_head(h), h @ m.tok_emb.weight.T)


def test_untied_head_owns_its_weight():
    m = make(TIE_EMBEDDINGS=0)
    assert "lm_head.weight" in dict(m.named_parameters())
    assert isinstance(m.lm_head, nn.Linear)
    assert torch.count_nonzero(m.lm_head.weight) == 0


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_runs_forward_and_backward(name):
    over = OPTIONS[name]
    m = make(**over)
    h = hp(**over)
    x, y = tokens(), tokens(seed=3)
    m.zero_grad()
    for on in (False, True):
        m.set_recurrence(on)
        loss = m(x, y)
        assert torch.isfinite(loss)
        loss.backward()
    for n, p in m.named_parameters():  # every parameter is used (some only with recurrence)
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert len(m.blocks) == h.num_layers
    assert m.blocks[0].mlp.fc.out_features == int(h.mlp_mult * h.model_dim)
    if h.shared_specific_dims:  # PR #1774's parameterisation: full matrices, tied in the forward
        assert isinstance(m.blocks[0].attn.c_q, HeadSharedLinear)
        assert m.blocks[0].attn.c_q.out_features == h.model_dim
        assert m.blocks[0].attn.c_k.out_features == h.num_kv_heads * (h.model_dim // h.num_heads)
    assert (m.blocks[0].attn.attn_gate is not None) == h.gated_attn
    assert (m.blocks[0].attn.out_gate is not None) == h.sparse_attn_gate
    assert (m.smear is not None) == h.smear_gate
    assert (m.bigram is not None) == (h.bigram_hash_buckets > 0)


@pytest.mark.parametrize("name", ["record_like", "all_options", "baseline"])
def test_causal(name):
    """Changing token t changes no logit before t (smear, bigram, shared dims included)."""
    m = make(**OPTIONS[name]).eval()
    m.set_recurrence(True)
    x = tokens(b=1, t=20)
    x2 = x.clone()
    x2[0, 12] = (x[0, 12] + 5) % 128
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_baseline_preset_structure():
    h = hp(**OPTIONS["baseline"])
    m = GPT(h)
    assert h.mlp_act == "relu2" and m.blocks[0].mlp.fc.out_features == 2 * h.model_dim
    assert m.skip_gates is None and not m.has_loops
    assert all(not b.attn.use_xsa and not b.parallel and b.norm_scale == 1.0 for b in m.blocks)
    assert m.encoder_indices == [0, 1, 2, 3] and m.decoder_indices == [4, 5, 6, 7, 8]
    m.set_recurrence(True)  # no loops configured: stays the plain 9-layer stack
    assert m.virtual_layers == 9


def test_layer_flags_follow_the_config():
    m = make(PARALLEL_START_LAYER=3, XSA_LAST_N=2, PARALLEL_LANES=1, QK_GAIN_INIT=5.25)
    assert [b.parallel for b in m.blocks] == [False, False, False, True, True]
    assert all(b.lane_post is None for b in m.blocks)
    assert [b.attn.use_xsa for b in m.blocks] == [False, False, False, True, True]
    assert [b.norm_scale for b in m.blocks] == pytest.approx([1 / math.sqrt(i + 1) for i in range(5)])
    assert all(torch.allclose(b.attn.q_gain, torch.full((4,), 5.25)) for b in m.blocks)
    # two lanes: no GPT-J blocks; lane weights on the layers from PARALLEL_START_LAYER
    m = make(PARALLEL_START_LAYER=3)
    assert not any(b.parallel for b in m.blocks)
    assert [b.lane_post is not None for b in m.blocks] == [False, False, False, True, True]
    assert all(torch.allclose(b.attn.q_gain, torch.full((4,), 5.0)) for b in m.blocks)  # tiny: 5.0


def test_record_recurrence_gives_17_virtual_layers():
    h = Hyperparameters.from_env({})
    enc, dec = layer_schedule(h.num_layers, h.loop_start, h.loop_end, h.num_loops, True)
    assert enc == [0, 1, 2, 3, 4, 5, 3, 4]
    assert dec == [5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert layer_schedule(11, 3, 5, 2, False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    assert len(layer_schedule(11, 4, 5, 2, True)[0]) == 7  # the 04-05 record's 15 virtual layers


def test_recurrence_runs_the_looped_layers_again():
    m = make()  # loops layers 1..2 two extra times
    calls = []
    for i, b in enumerate(m.blocks):  # (the attention: lane blocks are not called as modules)
        b.attn.register_forward_pre_hook(lambda _m, _a, i=i: calls.append(i))
    x = tokens()
    m(x)
    assert calls == [0, 1, 2, 3, 4]
    calls.clear()
    m.set_recurrence(True)
    out = m(x, x)
    assert calls == [0, 1, 2, 1, 2, 1, 2, 3, 4] and m.virtual_layers == 9
    assert torch.isfinite(out)
    m.set_recurrence(False)
    calls.clear()
    m(x)
    assert len(calls) == 5


def test_linear_hooks_see_every_matrix_input():
    """Quantization collects inputs with forward pre-hooks on nn.Linear and on lm_head."""
    m = make()
    seen = set()
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Linear) or name == "lm_head":
            mod.register_forward_pre_hook(lambda _m, a, n=name: seen.add(n))
    m(tokens())
    expected = {n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)} | {"lm_head"}
    assert seen == expected


def test_deepcopy_keeps_the_tie():
    m = make()
    c = copy.deepcopy(m)
    with torch.no_grad():
        c.tok_emb.weight.mul_(2)
    x = tokens()
    assert not torch.allclose(c(x), m(x))
    assert torch.allclose(c.lm_head(c.hidden(x)), c.hidden(x) @ c.tok_emb.weight.T)


def naive_attention(q, k, v):
    """float64 reference: causal softmax(q k^T / sqrt(D)) v with KV heads shared by groups."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    T = q.size(2)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (8, 2)])
def test_cpu_attention_matches_naive_reference(heads, kv_heads):
    assert attention_backend() == "sdpa_cpu"
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    q = torch.randn(2, 33, heads, 16, generator=g)
    k = torch.randn(2, 33, kv_heads, 16, generator=g)
    v = torch.randn(2, 33, kv_heads, 16, generator=g)
    y = causal_attention(q, k, v)
    ref = naive_attention(q, k, v)
    assert y.shape == (2, 33, heads, 16)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_xsa_removes_the_own_value_direction():
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, 10, 8, 16, generator=g)
    v = torch.randn(2, 10, 4, 16, generator=g)
    out = xsa_remove_self(y, v)
    v_per_head = v.repeat_interleave(2, dim=2)  # head j uses KV head j // 2
    assert (out * v_per_head).sum(-1).abs().max() < 1e-5  # orthogonal to its own value
    # and only that component was removed
    vn = torch.nn.functional.normalize(v_per_head, dim=-1)
    assert torch.allclose(y - out, (y * vn).sum(-1, keepdim=True) * vn, atol=1e-6)


def test_xsa_flag_changes_the_model_output():
    torch.manual_seed(0)
    m = make(XSA_LAST_N=5)
    for b in m.blocks:  # make attention matter: non-zero output projections
        torch.nn.init.normal_(b.attn.proj.weight, std=0.05)
    x = tokens()
    with torch.no_grad():
        a = m(x)
        for b in m.blocks:
            b.attn.use_xsa = False
        assert not torch.allclose(a, m(x))


def test_smear_gate_stops_at_document_start():
    sg = SmearGate(16, 12)
    with torch.no_grad():
        sg.lam.fill_(1.0)
        sg.proj.weight.normal_()
    x = torch.randn(1, 5, 16)
    ids = torch.tensor([[7, 8, SMEAR_BOS_ID, 9, 10]])
    out = sg(x, ids)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 2])
    assert not torch.allclose(out[:, 1], x[:, 1]) and not torch.allclose(out[:, 3], x[:, 3])


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="ROPE_DIMS"):
        make(ROPE_DIMS=20)
    with pytest.raises(ValueError, match="LOOP_START"):
        make(LOOP_START=3, LOOP_END=7)
    with pytest.raises(ValueError, match="MLP_ACT"):
        make(MLP_ACT="gelu")


def test_sequences_longer_than_the_rope_table():
    m = make(TRAIN_SEQ_LEN=16, EVAL_SEQ_LEN=16).eval()
    assert m.rope_cos.shape[0] == 16
    x = tokens(b=1, t=40)
    with torch.no_grad():
        long_out = m(x)
        short_out = m(x[:, :16])
    assert long_out.shape == (1, 40, 128)
    assert torch.allclose(long_out[:, :16], short_out, atol=1e-5)
