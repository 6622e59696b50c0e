"""trainer/attention.py on CPU: backend selection and fallback, the FA4 custom ops' registration
(through their CPU stand-in), the packed (varlen) reference paths and FlexAttention's block mask."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from trainer import attention as A
from trainer.attention import (
    AttentionBackendError,
    BackendUnavailable,
    attention_backend,
    attention_notes,
    causal_attention,
    select_attention_backend,
    varlen_causal_attention,
)

CPU = torch.device("cpu")
SMALL = dict(heads=4, kv_heads=2, head_dim=16)  # the probes' shape: quick on CPU


@pytest.fixture(autouse=True)
def _reset_selection():
    yield
    select_attention_backend(CPU)


def naive(q, k, v):
    """float64 causal GQA attention, [B, T, H, D]."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    t = q.size(2)
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def naive_varlen(q, k, v, cu):
    out = torch.zeros(q.shape, dtype=torch.float64)
    b = cu.tolist()
    for s, e in zip(b[:-1], b[1:]):
        if e > s:
            out[s:e] = naive(q[None, s:e], k[None, s:e], v[None, s:e])[0]
    return out


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


# --- kernels injected into the selection (real attention implementations, right and wrong) ---


def good_dense(q, k, v):
    return naive(q, k, v).to(q.dtype)


def good_varlen(q, k, v, cu, max_seqlen):
    return naive_varlen(q, k, v, cu).to(q.dtype)


def non_causal_dense(q, k, v):  # a plausible bug: the mask forgotten
    rep = q.size(2) // k.size(2)
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return y.transpose(1, 2)


def cross_segment_varlen(q, k, v, cu, max_seqlen):  # another: segments ignored
    return good_dense(q[None], k[None], v[None])[0]


def crashing(*args):
    raise RuntimeError("kernel launch failed: no kernel image is available\nfor execution on the device")


def loader(dense, varlen=None):
    return lambda device: (dense, varlen)


def missing(device):
    raise BackendUnavailable("pretend_fa not installed")


# --- selection ---------------------------------------------------------------------------------


def test_cpu_default_is_sdpa_and_the_loop():
    assert select_attention_backend(CPU) == "sdpa_cpu" == attention_backend()
    notes = attention_notes()
    assert any(n.startswith("fa4: not available") for n in notes)
    assert any(n.startswith("sdpa_cudnn: not available: needs CUDA") for n in notes)
    q, k, v = rand(2, 37, 4, 16, seed=1), rand(2, 37, 2, 16, seed=2), rand(2, 37, 2, 16, seed=3)
    assert rel(causal_attention(q, k, v), naive(q, k, v)) < 1e-5
    assert A._ATTN_STATE["varlen_name"] == "loop"


def test_auto_takes_the_first_candidate_that_imports_and_passes_its_probe():
    calls = []

    def counted(q, k, v):
        calls.append(q.shape)
        return good_dense(q, k, v)

    kernels = {"fa4": missing, "fa3": loader(counted, good_varlen)}
    name = select_attention_backend(CPU, **SMALL, loaders=kernels)
    assert name == "fa3" == attention_backend()  # packed path from the same kernel: no suffix
    assert calls, "the probe ran the kernel"
    calls.clear()
    q, k, v = rand(1, 9, 4, 8, seed=4), rand(1, 9, 2, 8, seed=5), rand(1, 9, 2, 8, seed=6)
    causal_attention(q, k, v)
    assert calls == [q.shape]  # the model's calls go to the selected kernel
    assert any("fa4: not available: pretend_fa not installed" in n for n in attention_notes())


@pytest.mark.parametrize("bad,why", [(non_causal_dense, "relative error"), (crashing, "RuntimeError")])
def test_auto_falls_back_when_the_probe_fails(bad, why):
    kernels = {"fa4": loader(bad, good_varlen), "fa3": loader(good_dense)}
    name = select_attention_backend(CPU, **SMALL, loaders=kernels)
    assert name == "fa3[fa4:probe]"
    note = next(n for n in attention_notes() if n.startswith("fa4:"))
    assert note.startswith("fa4: failed: probe:") and why in note and "\n" not in note
    # fa3 has no packed kernel and fa4 was dropped: the packed path is the reference loop
    assert A._ATTN_STATE["varlen_name"] == "loop"


def test_all_candidates_failing_leaves_sdpa():
    bad = {"fa4": loader(crashing), "fa3": loader(non_causal_dense), "sdpa_cudnn": loader(crashing)}
    name = select_attention_backend(CPU, **SMALL, loaders=bad)
    assert name == "sdpa_cpu[fa4:probe,fa3:probe,sdpa_cudnn:probe]"
    q, k, v = rand(1, 20, 4, 8, seed=7), rand(1, 20, 2, 8, seed=8), rand(1, 20, 2, 8, seed=9)
    assert rel(causal_attention(q, k, v), naive(q, k, v)) < 1e-5


def test_packed_path_falls_back_separately():
    name = select_attention_backend(CPU, **SMALL, loaders={"fa4": loader(good_dense, cross_segment_varlen),
                                                  "fa3": loader(good_dense, good_varlen)})
    assert name == "fa4+varlen_fa3[fa4_varlen:probe]"
    assert any(n.startswith("fa4 (packed): failed: probe") for n in attention_notes())
    kernels = {"fa4": loader(good_dense, crashing), "fa3": missing}
    name = select_attention_backend(CPU, **SMALL, loaders=kernels)
    assert name == "fa4[fa4_varlen:probe]"  # on CPU the loop is the normal packed path: no suffix
    assert A._ATTN_STATE["varlen_name"] == "loop"


def test_forced_backend_unavailable_is_one_clear_line():
    with pytest.raises(AttentionBackendError) as e:
        select_attention_backend(CPU, "fa4", **SMALL, loaders={"fa4": missing})
    msg = str(e.value)
    assert msg == "ATTENTION_BACKEND=fa4: not available on cpu: pretend_fa not installed"
    with pytest.raises(AttentionBackendError, match=r"^ATTENTION_BACKEND=sdpa_cudnn: not available on cpu: "
                                                    r"needs CUDA$"):
        select_attention_backend(CPU, "sdpa_cudnn")
    with pytest.raises(AttentionBackendError) as e:
        select_attention_backend(CPU, "fa3", **SMALL, loaders={"fa3": loader(crashing)})
    msg = str(e.value)
    assert msg.startswith("ATTENTION_BACKEND=fa3: failed on cpu: probe: RuntimeError: kernel launch failed")
    assert "\n" not in msg
    with pytest.raises(AttentionBackendError, match="expected one of auto, fa4, fa3, sdpa_cudnn, sdpa"):
        select_attention_backend(CPU, "fa5")
    # after a failed forced selection the model still gets correct attention (plain SDPA)
    q, k, v = rand(1, 12, 2, 8, seed=10), rand(1, 12, 1, 8, seed=11), rand(1, 12, 1, 8, seed=12)
    assert rel(causal_attention(q, k, v), naive(q, k, v)) < 1e-5


def test_forced_backend_is_used_when_it_works():
    kernels = {"fa3": loader(good_dense, good_varlen)}
    assert select_attention_backend(CPU, "FA3", **SMALL, loaders=kernels) == "fa3"
    assert select_attention_backend(CPU, "sdpa") == "sdpa_cpu"


def test_missing_module_is_absent_but_a_broken_install_is_a_failure(tmp_path, monkeypatch):
    with pytest.raises(BackendUnavailable, match="pgolf_no_such_pkg.cute not installed"):
        A._load_fa4(CPU, module="pgolf_no_such_pkg.cute")
    pkg = tmp_path / "pgolf_broken_fa"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import pgolf_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = {"fa4": lambda d: A._load_fa4(d, module="pgolf_broken_fa")}
    assert select_attention_backend(CPU, **SMALL, loaders=broken) == "sdpa_cpu[fa4:import]"
    assert any(n.startswith("fa4: failed: import failed: ModuleNotFoundError") for n in attention_notes())
    sys.modules.pop("pgolf_broken_fa", None)


# --- the FA4 custom ops (CPU stand-in) ---------------------------------------------------------


def test_fa4_ops_pass_opcheck():
    q = rand(2, 40, 4, 16, seed=20).requires_grad_()
    k = rand(2, 40, 2, 16, seed=21).requires_grad_()
    v = rand(2, 40, 2, 16, seed=22).requires_grad_()
    res = torch.library.opcheck(torch.ops.pgolf_attn.fa4_fwd.default, (q, k, v))
    assert set(res.values()) == {"SUCCESS"}, res
    cu = torch.tensor([0, 10, 25, 26, 40, 40], dtype=torch.int32)
    qv, kv, vv = (t[0].detach().clone().requires_grad_() for t in (q, k, v))
    res = torch.library.opcheck(torch.ops.pgolf_attn.fa4_varlen_fwd.default, (qv, kv, vv, cu, 15))
    assert set(res.values()) == {"SUCCESS"}, res
    out, lse = torch.ops.pgolf_attn.fa4_fwd(q, k, v)
    assert lse.shape == (2, 4, 40) and lse.dtype == torch.float32 and not lse.requires_grad
    dout = rand(*out.shape, seed=23)
    for fn in (torch.ops.pgolf_attn.fa4_bwd.default,):
        res = torch.library.opcheck(fn, (q.detach(), k.detach(), v.detach(), out.detach(), lse, dout))
        assert set(res.values()) == {"SUCCESS"}, res


def test_fa4_op_gradients_match_autograd_of_the_definition():
    q = rand(1, 33, 4, 8, seed=30, dtype=torch.float64).requires_grad_()
    k = rand(1, 33, 2, 8, seed=31, dtype=torch.float64).requires_grad_()
    v = rand(1, 33, 2, 8, seed=32, dtype=torch.float64).requires_grad_()
    dout = rand(1, 33, 4, 8, seed=33, dtype=torch.float64)
    out = torch.ops.pgolf_attn.fa4_fwd(q, k, v)[0]
    out.backward(dout)
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = naive(q, k, v)
    ref.backward(dout)
    assert rel(out, ref) < 1e-6  # the stand-in computes in float32
    for g, t in zip(got, (q, k, v)):
        assert rel(g, t.grad) < 1e-5
    cu = torch.tensor([0, 5, 6, 20, 33, 33], dtype=torch.int32)
    qv, kv, vv = (t[0].detach().clone().requires_grad_() for t in (q, k, v))
    y = torch.ops.pgolf_attn.fa4_varlen_fwd(qv, kv, vv, cu, 14)[0]
    y.backward(dout[0])
    got = [t.grad.clone() for t in (qv, kv, vv)]
    for t in (qv, kv, vv):
        t.grad = None
    ref = naive_varlen(qv, kv, vv, cu)
    ref.backward(dout[0])
    assert rel(y, ref) < 1e-6
    for g, t in zip(got, (qv, kv, vv)):
        assert rel(g, t.grad) < 1e-5


def test_fa4_path_traces_with_fullgraph():
    """The failure FA4's own autograd.Function gives under dynamo is what the custom op avoids:
    a fullgraph compile (aot_eager: dynamo + AOTAutograd, no codegen) of the model-side calls."""
    select_attention_backend(CPU, **SMALL, loaders={"fa4": lambda d: (A._fa4_dense, A._fa4_varlen)})
    assert attention_backend() == "fa4"
    cu = torch.tensor([0, 10, 25, 26, 40, 40], dtype=torch.int32)

    def f(q, k, v):
        y = causal_attention(q, k, v)
        z = varlen_causal_attention(q[0], k[0], v[0], cu, 16)
        return y.float().square().sum() + (z.float() * v[0].float().sum(1, keepdim=True)).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [rand(1, 40, 4, 16, seed=s, dtype=torch.bfloat16).requires_grad_() for s in (40, 41, 42)]
    args[1] = rand(1, 40, 2, 16, seed=43, dtype=torch.bfloat16).requires_grad_()
    args[2] = rand(1, 40, 2, 16, seed=44, dtype=torch.bfloat16).requires_grad_()
    loss = compiled(*args)
    loss.backward()
    got = [t.grad.clone() for t in args]
    for t in args:
        t.grad = None
    ref = f(*args)
    ref.backward()
    assert torch.allclose(loss, ref)
    for g, t in zip(got, args):
        assert torch.equal(g, t.grad)


# --- packed attention ----------------------------------------------------------------------------


def segments_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(1, 70, (6,), generator=g)]
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    return torch.tensor(bounds + [bounds[-1]] * 3, dtype=torch.int32), bounds[-1], max(lengths)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_varlen_reference_matches_per_segment_attention_and_does_not_leak(seed):
    cu, n, mx = segments_case(seed)
    q, k, v = rand(n, 4, 8, seed=seed + 50), rand(n, 2, 8, seed=seed + 51), rand(n, 2, 8, seed=seed + 52)
    y = varlen_causal_attention(q, k, v, cu, mx)  # nothing selected for CPU beyond the loop
    assert rel(y, naive_varlen(q, k, v, cu)) < 1e-5
    out, lse = A.reference_varlen_fwd(q, k, v, cu)
    assert rel(out, naive_varlen(q, k, v, cu)) < 1e-5 and torch.isfinite(lse).all()
    # no attention across segments: changing segment 2 changes nothing outside it
    a, b = int(cu[2]), int(cu[3])
    k2, v2 = k.clone(), v.clone()
    k2[a:b] += 3.0
    v2[a:b] -= 2.0
    y2 = varlen_causal_attention(q, k2, v2, cu, mx)
    assert torch.equal(y2[:a], y[:a]) and torch.equal(y2[b:], y[b:]) and not torch.equal(y2[a:b], y[a:b])


@pytest.mark.parametrize("n,lengths", [(512, (100, 157, 1, 254)), (300, (128, 128, 44)), (700, (700,)),
                                       (389, (1, 1, 300, 87))])
def test_document_block_mask_is_exact(n, lengths):
    bounds = [0]
    for m in lengths:
        bounds.append(bounds[-1] + m)
    cu = torch.tensor(bounds + [n], dtype=torch.int32)
    bm = A.document_block_mask(cu, n)
    doc = torch.searchsorted(cu, torch.arange(n, dtype=torch.int32), right=True)
    i = torch.arange(n)
    allowed = (doc[:, None] == doc[None, :]) & (i[:, None] >= i[None, :])
    nb = (n + 127) // 128
    pad = nb * 128 - n
    # positions past n are "don't care": False for "any pair allowed", True for "all allowed"
    any_b = F.pad(allowed, (0, pad, 0, pad), value=False).view(nb, 128, nb, 128).any(3).any(1)
    all_b = F.pad(allowed, (0, pad, 0, pad), value=True).view(nb, 128, nb, 128).all(3).all(1)
    assert torch.equal(bm.to_dense()[0, 0].bool(), any_b)  # every block flex visits, partial or full
    full = torch.zeros(nb, nb, dtype=torch.bool)
    fn, fi = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
    for r in range(nb):
        full[r, fi[r, :fn[r]].long()] = True
    below = torch.arange(nb)[None, :] < torch.arange(nb)[:, None]
    # full blocks skip the mask: exactly the entirely allowed blocks below the diagonal
    assert torch.equal(full, all_b & below)


def test_flex_attention_with_the_document_mask_matches_the_loop():
    from torch.nn.attention.flex_attention import flex_attention

    cu, mx = A.probe_cu_seqlens(CPU)
    n = int(cu[-1])
    q, k, v = rand(n, 4, 16, seed=60), rand(n, 2, 16, seed=61), rand(n, 2, 16, seed=62)
    bm = A.document_block_mask(cu, n)
    with pytest.warns(UserWarning):  # eager flex: the unfused reference implementation, fine here
        y = flex_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                           block_mask=bm, enable_gqa=True)[0].transpose(0, 1)
    assert rel(y, naive_varlen(q, k, v, cu)) < 1e-5


def test_probes_accept_the_reference_and_reject_a_leak():
    assert A.probe_dense(good_dense, CPU, heads=4, kv_heads=2, head_dim=16) is None
    assert A.probe_varlen(good_varlen, CPU, heads=4, kv_heads=2, head_dim=16) is None
    err = A.probe_varlen(cross_segment_varlen, CPU, heads=4, kv_heads=2, head_dim=16)
    assert err is not None and err.startswith("out: relative error")
