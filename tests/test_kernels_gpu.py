"""trainer/kernels.py on a GPU (skipped without CUDA): the Triton kernels pass their self-test and
match a float64 reference at training shapes (outputs poisoned with NaN first, so an element left
unwritten fails), each GEMM variant, and inside a fullgraph-compiled function."""

from __future__ import annotations

import pytest
import torch

from trainer import kernels as K
from trainer.kernels import (
    enable_fused_kernels,
    leaky_relu2_mlp,
    linear_leaky_relu2,
    softcapped_cross_entropy,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    K._LAUNCH["poison"] = True
    yield
    K._LAUNCH["poison"] = False
    enable_fused_kernels(DEV)


def rel(a, ref) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    assert torch.isfinite(a).all(), "NaN/inf: an output element was not written, or overflow"
    return float((a - ref).norm() / ref.norm())


def fresh(*shape, seed, scale=1.0, dtype=torch.bfloat16):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, generator=g, device=DEV) * scale).to(dtype)


def test_self_test_switches_every_kernel_on():
    state = enable_fused_kernels(DEV)
    print(state)
    assert state["ce"] == "on:triton", state
    assert state["mlp"].startswith("on:"), state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,vocab", [(16384, 8192), (1000, 1024), (77, 8191)])
def test_softcapped_ce_against_float64(dtype, rows, vocab):
    assert enable_fused_kernels(DEV)["ce"] == "on:triton"
    logits = fresh(rows, vocab, seed=rows, scale=12.0, dtype=dtype).requires_grad_()
    g = torch.Generator(device=DEV).manual_seed(3)
    targets = torch.randint(0, vocab, (rows,), device=DEV, generator=g)
    loss = softcapped_cross_entropy(logits, targets, 30.0)
    loss.backward()
    ref_in = logits.detach().double().requires_grad_()
    z = 30.0 * torch.tanh(ref_in / 30.0)
    ref = torch.nn.functional.cross_entropy(z, targets)
    ref.backward()
    assert abs(float(loss) / float(ref) - 1) < 1e-5  # float32 accumulation
    e = rel(logits.grad, ref_in.grad)
    assert e < (1e-2 if dtype == torch.bfloat16 else 1e-5), e


@pytest.mark.parametrize("variant", ["tma", "ptr"])
@pytest.mark.parametrize("m,k,n", [(98304 // 8, 512, 2048), (1000, 512, 2304), (333, 64, 136)])
def test_mlp_kernels_against_float64(variant, m, k, n):
    if variant == "tma" and K.TensorDescriptor is None:
        pytest.skip("no triton.tools.tensor_descriptor")
    K._LAUNCH["mlp_variant"] = variant
    K._KERNEL_STATE["mlp"] = f"on:{variant}"
    x = fresh(m, k, seed=m).requires_grad_()
    w1 = fresh(n, k, seed=n, scale=k ** -0.5).requires_grad_()
    w2 = fresh(k, n, seed=n + 1, scale=n ** -0.5).requires_grad_()
    gy, gh = fresh(m, k, seed=5), fresh(m, n, seed=6)
    h = linear_leaky_relu2(x, w1)
    y = leaky_relu2_mlp(x, w1, w2)
    ((h * gh).float().sum() + (y * gy).float().sum()).backward()
    refs = [t.detach().double().requires_grad_() for t in (x, w1, w2)]
    h_ref = torch.nn.functional.leaky_relu(refs[0] @ refs[1].t(), 0.5).square()
    y_ref = h_ref @ refs[2].t()
    ((h_ref * gh.double()).sum() + (y_ref * gy.double()).sum()).backward()
    for name, a, r in (("hidden", h, h_ref), ("out", y, y_ref), ("dx", x.grad, refs[0].grad),
                       ("dw1", w1.grad, refs[1].grad), ("dw2", w2.grad, refs[2].grad)):
        e = rel(a, r)
        assert 0 < e < 1e-2, f"{variant} {name}: {e:.3g}"


def test_kernels_inside_a_compiled_graph():
    assert all(v.startswith("on") for v in enable_fused_kernels(DEV).values())
    w1 = fresh(2048, 512, seed=1, scale=0.04).requires_grad_()
    w2 = fresh(512, 2048, seed=2, scale=0.02).requires_grad_()
    emb = fresh(8192, 512, seed=3, scale=0.05).requires_grad_()

    def f(x, targets):
        hdn = x + leaky_relu2_mlp(x, w1, w2) + linear_leaky_relu2(x, w1)[..., :512]
        logits = hdn.reshape(-1, 512) @ emb.t()
        return softcapped_cross_entropy(logits, targets.reshape(-1), 30.0)

    x = fresh(4, 1024, 512, seed=4)
    t = torch.randint(0, 8192, (4, 1024), device=DEV)
    loss = torch.compile(f, fullgraph=True, dynamic=False)(x, t)
    loss.backward()
    got = [p.grad.clone() for p in (w1, w2, emb)]
    for p in (w1, w2, emb):
        p.grad = None
    K.disable_fused_kernels("reference")
    ref = f(x, t)
    ref.backward()
    assert abs(float(loss) / float(ref) - 1) < 1e-3
    for g, p in zip(got, (w1, w2, emb)):
        assert rel(g, p.grad) < 2e-2
