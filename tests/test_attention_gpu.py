"""trainer/attention.py on a GPU (skipped without CUDA): every backend that is available here, dense
and packed, against a float64 reference (forward and gradients, fresh random inputs), and the FA4
custom ops inside a fullgraph-compiled model."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import attention as A
from trainer.attention import (
    AttentionBackendError,
    causal_attention,
    select_attention_backend,
    varlen_causal_attention,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = torch.device("cuda")
BACKENDS = ("fa4", "fa3", "sdpa_cudnn", "sdpa")


@pytest.fixture(autouse=True)
def _restore():
    yield
    select_attention_backend(DEV, "auto")


def use(backend: str) -> str:
    try:
        return select_attention_backend(DEV, backend)
    except AttentionBackendError as e:
        if "not available" in str(e):
            pytest.skip(str(e))
        raise  # installed but failing its probe: a failure


def rel(a, ref) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - ref).norm() / ref.norm())


def ref_attention(q, k, v):
    """float64 causal GQA attention on [B, T, H, D] (upcast copies of the bf16 inputs)."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    t = q.size(2)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def fresh(*shape, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return torch.randn(*shape, generator=g, device=DEV).to(torch.bfloat16).requires_grad_()


def check_bf16(name, got, ref):
    e = rel(got, ref)
    assert 0 < e < 1e-2, f"{name}: ||out - ref|| / ||ref|| = {e:.3g} (bf16 kernels land in 1e-3..1e-2)"
    return e


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,t,h,hkv,d", [(2, 1024, 8, 4, 64), (1, 777, 8, 4, 64)])  # the model's heads
def test_dense_backend_against_float64(backend, b, t, h, hkv, d):
    use(backend)
    q, k, v = fresh(b, t, h, d, seed=t + 1), fresh(b, t, hkv, d, seed=t + 2), fresh(b, t, hkv, d, seed=t + 3)
    dout = fresh(b, t, h, d, seed=t + 4).detach()
    out = causal_attention(q, k, v)
    out.backward(dout)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = ref_attention(*leaves)
    ref.backward(dout.double())
    check_bf16("out", out, ref)
    for name, x, r in zip(("dq", "dk", "dv"), (q, k, v), leaves):
        check_bf16(name, x.grad, r.grad)


def packed_case(seed: int, n: int):
    """Random document lengths (some longer than 1024, some of 1 token) filling n tokens, padded
    with 3 empty entries like the loaders' buckets."""
    g = torch.Generator().manual_seed(seed)
    bounds = [0]
    longest = 1400 if seed % 2 else 300
    while bounds[-1] < n:
        bounds.append(min(n, bounds[-1] + int(torch.randint(1, longest, (1,), generator=g))))
    bounds += [n] * 3
    cu = torch.tensor(bounds, dtype=torch.int32, device=DEV)
    return cu, max(b - a for a, b in zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,n,h,hkv", [(1, 4096, 8, 4), (2, 3000, 8, 4)])
def test_packed_backend_against_float64(backend, seed, n, h, hkv):
    name = use(backend)
    cu, max_len = packed_case(seed, n)
    q = fresh(n, h, 64, seed=seed + 10)
    k, v = fresh(n, hkv, 64, seed=seed + 11), fresh(n, hkv, 64, seed=seed + 12)
    dout = fresh(n, h, 64, seed=seed + 13).detach()
    out = varlen_causal_attention(q, k, v, cu, max_len)
    out.backward(dout)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    bounds = cu.tolist()
    ref = torch.cat([ref_attention(*(x[None, a:b] for x in leaves))[0]
                     for a, b in zip(bounds[:-1], bounds[1:]) if b > a])  # the segments tile [0, n)
    ref.backward(dout.double())
    print(f"{name}: packed path {A._ATTN_STATE['varlen_name']}")
    check_bf16("out", out, ref)
    for nm, x, r in zip(("dq", "dk", "dv"), (q, k, v), leaves):
        check_bf16(nm, x.grad, r.grad)


class TinyAttention(torch.nn.Module):
    def __init__(self, dim=512, h=8, hkv=4):
        super().__init__()
        self.h, self.hkv, self.d = h, hkv, dim // h
        self.q = torch.nn.Linear(dim, dim, bias=False)
        self.kv = torch.nn.Linear(dim, 2 * hkv * self.d, bias=False)

    def forward(self, x, cu=None, max_len=0):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d)
        k, v = self.kv(x).view(b, t, 2, self.hkv, self.d).unbind(2)
        y = causal_attention(q, k, v)
        if cu is not None:
            flat = [z.reshape(b * t, z.size(2), self.d) for z in (q, k, v)]
            y = y + varlen_causal_attention(*flat, cu, max_len).view_as(y)
        return y.float().square().mean()


@pytest.mark.parametrize("backend", ("fa4", "sdpa_cudnn"))
def test_compiled_fullgraph_forward_backward(backend):
    """The model-side calls, compiled with fullgraph=True (inductor): dense and packed paths give
    the eager losses and gradients."""
    name = use(backend)
    torch.manual_seed(0)
    m = TinyAttention().to(DEV).to(torch.bfloat16)
    x = torch.randn(4, 512, 512, device=DEV, dtype=torch.bfloat16)
    cu, max_len = packed_case(5, 4 * 512)
    compiled = torch.compile(m, fullgraph=True, dynamic=False)
    loss = compiled(x, cu, max_len)
    loss.backward()
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    ref = m(x, cu, max_len)
    ref.backward()
    assert abs(float(loss) / float(ref) - 1) < 1e-3, (name, float(loss), float(ref))
    for g, p in zip(got, m.parameters()):
        assert rel(g, p.grad) < 1e-2


def test_auto_selection_reports_its_choice():
    name = select_attention_backend(DEV, "auto")
    notes = A.attention_notes()
    print(name, notes)
    assert A._ATTN_STATE["dense"] is not None and A._ATTN_STATE["varlen"] is not None
    assert "[" not in name, f"an installed kernel failed its probe: {name} {notes}"


def test_gpt_compiled_step_with_the_selected_backend():
    """One compiled forward+backward of a small GPT from the trainer's own code."""
    from trainer.config import Hyperparameters
    from trainer.train import autocast_context, build_model

    select_attention_backend(DEV, "auto")
    h = Hyperparameters.from_env({"PRESET": "tiny", "NUM_LAYERS": "4", "MODEL_DIM": "256", "NUM_HEADS": "4",
                                  "NUM_KV_HEADS": "2", "ROPE_DIMS": "16", "TRAIN_SEQ_LEN": "256",
                                  "COMPILE": "1"})
    model = build_model(h, DEV)
    runner = torch.compile(model, dynamic=False, fullgraph=True)
    x = torch.randint(0, h.vocab_size, (4, 256), device=DEV)
    y = torch.randint(0, h.vocab_size, (4, 256), device=DEV)
    with autocast_context(DEV):
        loss = runner(x, y)
    loss.backward()
    assert torch.isfinite(loss) and 5.0 < float(loss) < 9.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
