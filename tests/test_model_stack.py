"""The 1.0611 stack's model pieces (trainer/model.py), each against its definition, on CPU.

Definitions (shared/reference/sota_1.0611/train_gpt.py): SmearGate with the BOS mask on the raw
token embeddings before the first RMSNorm (``GPT._forward_hidden``); the sparse attention gate,
sigmoid(scale * W x[:window]) per head on the attention block's normed input, applied after XSA
and before the output projection (``CausalSelfAttention.forward``); two residual lanes in the
decoder from PARALLEL_START_LAYER (``GPT._parallel_block``, ``_final_parallel_hidden``);
document packing through varlen attention (``DocumentPackingLoader`` / ``_build_cu_seqlens``).
Shared-specific attention follows seed1774_1.0981 (``CausalSelfAttention._tie_shared_weight``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.attention import select_attention_backend
from trainer.config import Hyperparameters
from trainer.data import DOC_BOS_ID, doc_cu_seqlens
from trainer.model import GPT, HeadSharedLinear, lane_start_position

V = 128
BASE = {"PRESET": "tiny", "VOCAB_SIZE": str(V), "NUM_LAYERS": "5", "MODEL_DIM": "64", "NUM_HEADS": "4",
        "NUM_KV_HEADS": "2", "ROPE_DIMS": "8", "LOOP_START": "1", "LOOP_END": "2", "NUM_LOOPS": "2",
        "PARALLEL_START_LAYER": "3", "XSA_LAST_N": "5"}


@pytest.fixture(autouse=True, scope="module")
def _cpu_attention():
    select_attention_backend(torch.device("cpu"))


def hp(**over) -> Hyperparameters:
    return Hyperparameters.from_env({**BASE, **{k: str(v) for k, v in over.items()}})


def make(seed: int = 0, **over) -> GPT:
    torch.manual_seed(seed)
    return GPT(hp(**over))


def liven(m: GPT, seed: int = 1) -> GPT:
    """Random values where init is zero or one (projections, gates, smear, lanes, skips), so every
    path carries signal: a broken mask or a missing term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("proj.weight", "out_gate.weight", "lam", "lane_post", "lane_resid",
                              "skip_gates", "resid_mix")) or "smear" in name:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))
    return m


def doc_batch() -> torch.Tensor:
    """Row 0: a document [0, 10), then one starting with a BOS at 10; row 1: other text."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(2, V, (2, 24), generator=g)
    x[0, 10] = DOC_BOS_ID
    x[1, 17] = DOC_BOS_ID
    return x


# --- document packing and the BOS mask -------------------------------------------------------------


@pytest.mark.parametrize("recurrence", [False, True])
def test_packing_is_causal_and_keeps_documents_apart(recurrence):
    m = liven(make()).eval()
    m.set_recurrence(recurrence)
    x = doc_batch()

    def run(ids):
        with torch.no_grad():
            return m(ids, cu_seqlens=doc_cu_seqlens(ids))

    base = run(x)
    for t in (3, 9):  # in the first document; 9 is the token right before the next BOS
        x2 = x.clone()
        x2[0, t] = (x[0, t] + 7) % V
        out = run(x2)
        assert torch.equal(out[0, :t], base[0, :t])  # nothing earlier
        assert not torch.allclose(out[0, t:10], base[0, t:10])  # its own document does change
        assert torch.equal(out[0, 10:], base[0, 10:])  # nothing in the next document, BOS included
        assert torch.equal(out[1], base[1])  # nor in another row
    x2 = x.clone()
    x2[0, 15] = (x[0, 15] + 7) % V  # inside the second document
    out = run(x2)
    assert torch.equal(out[0, :15], base[0, :15]) and not torch.allclose(out[0, 15:], base[0, 15:])
    # the control: dense causal attention does carry the first document into the second
    with torch.no_grad():
        x2 = x.clone()
        x2[0, 3] = (x[0, 3] + 7) % V
        assert not torch.allclose(m(x2)[0, 10:], m(x)[0, 10:])


def test_a_packed_document_scores_as_if_alone():
    """Packing changes nothing but what is visible: the second document of a packed row gives the
    logits it gives as a sequence of its own (RoPE is relative: its offset does not matter)."""
    m = liven(make()).eval()
    x = doc_batch()
    with torch.no_grad():
        packed = m(x, cu_seqlens=doc_cu_seqlens(x))
        alone = m(x[:1, 10:])
        first = m(x[:1, :10])
    assert torch.allclose(packed[0, 10:], alone[0], atol=1e-5)
    assert torch.allclose(packed[0, :10], first[0], atol=1e-5)


def test_smear_gate_is_applied_to_raw_embeddings_and_masked_at_bos():
    m = liven(make())
    seen = {}
    m.smear.register_forward_hook(lambda _m, a, out: seen.update(inp=a[0], out=out))
    x = doc_batch()
    m.hidden(x)
    e = m.tok_emb(x)
    assert torch.equal(seen["inp"], e)  # before the first RMSNorm, as the record does
    w, lam = m.smear.proj.weight, m.smear.lam
    g = lam * torch.sigmoid(e[:, 1:, :12] @ w.T)  # the gate reads the current token's first 12 dims
    keep = (x[:, 1:] != DOC_BOS_ID).float().unsqueeze(-1)
    want = torch.cat((e[:, :1], e[:, 1:] + g * e[:, :-1] * keep), dim=1)
    assert torch.allclose(seen["out"], want, atol=1e-6)
    assert torch.equal(seen["out"][0, 10], e[0, 10])  # the BOS position keeps its own embedding


# --- the sparse attention gate ---------------------------------------------------------------------


def test_sparse_attention_gate_definition():
    h = hp(SPARSE_ATTN_GATE_SCALE=0.5)
    torch.manual_seed(0)
    m = liven(GPT(h))
    attn = m.blocks[4].attn  # an XSA layer: the gate acts after XSA
    assert attn.use_xsa and attn.out_gate.weight.shape == (h.num_heads, h.attn_gate_window)
    x = torch.randn(2, 24, h.model_dim)
    cos, sin = m.rope_cos[:24][None, :, None, :], m.rope_sin[:24][None, :, None, :]
    seen = []
    attn.proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    gate = attn.out_gate
    attn(x, cos, sin)
    attn.out_gate = None
    attn(x, cos, sin)
    attn.out_gate = gate
    gated, plain = (t.view(2, 24, h.num_heads, -1) for t in seen)
    g = torch.sigmoid(0.5 * (x[..., :h.attn_gate_window] @ gate.weight.T))  # [B, T, heads]
    assert torch.allclose(gated, plain * g.unsqueeze(-1), atol=1e-6)


def test_gates_at_init():
    """Zero-init gates: SmearGate is the identity; the sparse attention gate is sigmoid(0) = 1/2
    on every head (as in the record: not transparent); lanes start at carry 1.1, weights 1."""
    full = make()
    plain = make(SMEAR_GATE=0, SPARSE_ATTN_GATE=0)
    missing, unexpected = plain.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith("smear.") or ".out_gate." in k for k in unexpected)
    assert torch.count_nonzero(full.smear.proj.weight) == 0 and full.smear.lam.item() == 0
    assert all(torch.count_nonzero(b.attn.out_gate.weight) == 0 for b in full.blocks)
    with torch.no_grad():
        for b in plain.blocks:
            b.attn.proj.weight.normal_(std=0.05)
        for b, c in zip(full.blocks, plain.blocks):
            b.attn.proj.weight.copy_(2 * c.attn.proj.weight)  # the gate halves what reaches proj
    x = doc_batch()
    with torch.no_grad():
        assert torch.allclose(full(x), plain(x), atol=1e-5)
    lane_blocks = [b for b in full.blocks if b.lane_post is not None]
    assert lane_blocks and all(torch.equal(b.lane_resid, torch.full((2,), 1.1)) and
                               torch.equal(b.lane_post, torch.ones(2, 2)) for b in lane_blocks)


# --- two residual lanes ----------------------------------------------------------------------------


def test_lane_start_follows_the_decoder_tail():
    assert lane_start_position([5, 3, 4, 5, 6, 7, 8, 9, 10], 8) == 6  # the record: layers 8, 9, 10
    assert lane_start_position([5, 6, 7, 8, 9, 10], 8) == 3
    assert lane_start_position([2, 1, 2, 3], 2) == 2  # back below the start: those stay single-lane
    assert lane_start_position([2, 3], 2) == 0
    assert lane_start_position([5, 6], -1) == 2 and lane_start_position([5, 6], 7) == 2


def test_lane_block_definition():
    m = liven(make())
    b = m.blocks[3]
    dim = 64
    g = torch.Generator().manual_seed(3)
    l0, l1, x0 = (torch.randn(2, 8, dim, generator=g) for _ in range(3))
    cos, sin = m.rope_cos[:8][None, :, None, :], m.rope_sin[:8][None, :, None, :]
    n0, n1 = l0.clone(), l1.clone()
    out0, out1 = b.forward_lanes(l0, l1, x0, cos, sin)
    assert torch.equal(l0, n0) and torch.equal(l1, n1)  # inputs untouched
    s = b.norm_scale
    mix = b.resid_mix
    a = b.attn_scale * b.attn(F.rms_norm(mix[0] * l0 + mix[1] * x0, (dim,)) * s, cos, sin)
    f = b.mlp_scale * b.mlp(F.rms_norm(l1, (dim,)) * s)  # the MLP reads lane 1 alone
    r, p = b.lane_resid, b.lane_post
    assert torch.allclose(out0, r[0] * l0 + p[0, 0] * a + p[1, 0] * f, atol=1e-6)
    assert torch.allclose(out1, r[1] * l1 + p[0, 1] * a + p[1, 1] * f, atol=1e-6)


def test_lanes_run_in_the_decoder_tail_and_meet_at_the_end():
    m = liven(make(NUM_LAYERS=4, PARALLEL_START_LAYER=2))
    blocks, attns = [], []
    for i, b in enumerate(m.blocks):
        b.register_forward_pre_hook(lambda _m, _a, i=i: blocks.append(i))  # single-lane calls only
        b.attn.register_forward_pre_hook(lambda _m, _a, i=i: attns.append(i))
    x = doc_batch()
    m(x)
    assert (blocks, attns) == ([0, 1], [0, 1, 2, 3])
    blocks.clear(), attns.clear()
    m.set_recurrence(True)  # decoder [2, 1, 2, 3]: lanes for its tail 2, 3
    m(x)
    assert (blocks, attns) == ([0, 1, 2, 1, 2, 1], [0, 1, 2, 1, 2, 1, 2, 3])
    # PARALLEL_FINAL_LANE picks what meets the head: the lanes' mean by default
    outs = {}
    for kind in ("mean", "attn", "mlp"):
        m.final_lane = kind
        with torch.no_grad():
            outs[kind] = m(x)
    assert not torch.allclose(outs["attn"], outs["mlp"])
    assert not torch.allclose(outs["mean"], outs["attn"])


def test_bad_lane_settings_are_clear_errors():
    with pytest.raises(ValueError, match="PARALLEL_LANES"):
        make(PARALLEL_LANES=3)
    with pytest.raises(ValueError, match="PARALLEL_FINAL_LANE"):
        make(PARALLEL_FINAL_LANE="sum")
    with pytest.raises(ValueError, match="ATTN_GATE_WINDOW"):
        make(ATTN_GATE_WINDOW=0)


# --- shared-specific attention (PR #1774) ----------------------------------------------------------


def test_head_shared_linear_ties_the_last_dims_of_every_head():
    torch.manual_seed(0)
    lin = HeadSharedLinear(32, heads=4, head_dim=8, shared=3)
    x = torch.randn(5, 32)
    w = lin.weight.detach().view(4, 8, 32)
    mean = w[:, 5:].mean(0)
    want = torch.cat([torch.cat((w[hd, :5], mean)) for hd in range(4)])  # PR #1774's tied matrix
    out = lin(x)
    assert torch.allclose(out, x @ want.T, atol=1e-6)
    heads = out.view(5, 4, 8)
    assert torch.allclose(heads[:, 0, 5:], heads[:, 3, 5:])  # the shared dims agree over heads
    out.square().sum().backward()
    gw = lin.weight.grad.view(4, 8, 32)
    assert torch.allclose(gw[0, 5:], gw[2, 5:])  # each copy gets 1/heads of the shared gradient
    lin.bake()
    assert torch.allclose(lin.weight.view(4, 8, 32)[1, 5:], mean) and torch.allclose(lin(x), out)


def test_shared_specific_model_bakes_without_changing_its_function():
    m = liven(make(MODEL_DIM=128, SHARED_SPECIFIC_DIMS=16, ROPE_DIMS=16))
    c_q = m.blocks[0].attn.c_q
    assert isinstance(c_q, HeadSharedLinear) and c_q.weight.shape == (128, 128)
    x = doc_batch()
    with torch.no_grad():
        before = m(x)
        m.bake_shared_heads()
        after = m(x)
    assert torch.allclose(before, after, atol=1e-5)
    w = m.blocks[0].attn.c_k.weight.view(2, 32, 128)
    assert torch.equal(w[0, 16:], w[1, 16:])


# --- fused training paths --------------------------------------------------------------------------


def test_fused_training_paths_compute_the_same_loss_and_respect_hooks():
    m = liven(make(FUSED_CE=1, FUSED_MLP=1))
    x, y = doc_batch(), torch.roll(doc_batch(), -1, 1)
    m.train()
    with torch.no_grad():
        train_loss = m(x, y)
        m.eval()
        eval_loss = m(x, y)
    assert torch.allclose(train_loss, eval_loss, atol=1e-6)
    m.train()
    calls = []
    for mod in (m.blocks[0].mlp.fc, m.lm_head):
        mod.register_forward_pre_hook(lambda mm, _a: calls.append(mm))
    m(x, y)
    assert m.blocks[0].mlp.fc in calls and m.lm_head in calls  # hooked: the module is called


def test_new_parameters_of_the_default_stack():
    """Names and shapes other parts rely on (quantization classes, the parity harness)."""
    m = GPT(Hyperparameters.from_env({"PRESET": "pr1855"}))
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["smear.proj.weight"] == (1, 12) and shapes["smear.lam"] == (1,)
    assert all(shapes[f"blocks.{i}.attn.out_gate.weight"] == (8, 12) for i in range(11))
    lanes = sorted(n for n in shapes if ".lane_" in n)
    assert lanes == sorted(f"blocks.{i}.{k}" for i in (8, 9, 10) for k in ("lane_resid", "lane_post"))
    # the 1.0611 record's model_params (35,945,671) less its lane weights for layers 0-7 (8 x 6)
    assert sum(p.numel() for p in m.parameters()) == 35_945_671 - 48
    assert m.varlen_attn and m.fused_ce
