"""trainer/kernels.py on CPU: the eager definitions, the custom ops' registration and gradients
(through their CPU stand-ins), fullgraph tracing, and Triton's @jit getting its source inside the
packed submission (when Triton is importable)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from pgolf.pack import bundle_source, pack_source
from trainer import kernels as K
from trainer.kernels import (
    enable_fused_kernels,
    fused_kernel_status,
    leaky_relu2_mlp,
    linear_leaky_relu2,
    softcapped_cross_entropy,
)

CPU = torch.device("cpu")


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def all_success(res: dict) -> bool:
    return set(res.values()) == {"SUCCESS"}


# --- eager definitions (what runs on CPU) -------------------------------------------------------


def test_softcapped_cross_entropy_is_the_capped_mean_nll():
    logits = rand(13, 50, seed=1, scale=40.0, dtype=torch.float64)
    targets = torch.randint(0, 50, (13,), generator=torch.Generator().manual_seed(2))
    c = 30.0
    z = c * torch.tanh(logits / c)
    want = (torch.logsumexp(z, -1) - z[torch.arange(13), targets]).mean()
    got = softcapped_cross_entropy(logits, targets, c)  # computed in float32, as the trainer does
    assert abs(float(got) / float(want) - 1) < 1e-6
    assert z.abs().max() < c  # the cap bounds the logits


def test_mlp_definitions():
    x, w1, w2 = rand(3, 5, 16, seed=3), rand(24, 16, seed=4), rand(16, 24, seed=5)
    pre = x @ w1.t()
    want = torch.where(pre > 0, pre, 0.5 * pre) ** 2
    assert torch.allclose(linear_leaky_relu2(x, w1), want, atol=1e-6)
    assert torch.allclose(leaky_relu2_mlp(x, w1, w2), want @ w2.t(), atol=1e-5)
    assert linear_leaky_relu2(x.bfloat16(), w1).dtype == torch.bfloat16  # the weight follows x


def test_cpu_never_enables_the_fused_kernels():
    assert enable_fused_kernels(CPU) == {"ce": "off: needs CUDA", "mlp": "off: needs CUDA"}
    assert fused_kernel_status()["ce"] == "off: needs CUDA"
    K.disable_fused_kernels("benchmark baseline")
    assert fused_kernel_status() == {"ce": "off: benchmark baseline", "mlp": "off: benchmark baseline"}


# --- custom ops (CPU stand-ins of the Triton kernels) --------------------------------------------


def test_ops_pass_opcheck():
    logits = rand(9, 50, seed=6, scale=10.0).requires_grad_()
    targets = torch.tensor([3, 0, 49, -100, 7, 7, 12, 1, 2])
    ops = torch.ops.pgolf_kernels
    assert all_success(torch.library.opcheck(ops.softcapped_ce.default, (logits, targets, 30.0)))
    lse = torch.logsumexp(30.0 * torch.tanh(logits.detach() / 30.0), -1)
    assert all_success(torch.library.opcheck(ops.softcapped_ce_bwd.default,
                                             (logits.detach(), targets, lse, rand(9, seed=7), 30.0)))
    x, w1, w2 = (rand(12, 16, seed=8), rand(24, 16, seed=9), rand(16, 24, seed=10))
    x, w1, w2 = (t.requires_grad_() for t in (x, w1, w2))
    assert all_success(torch.library.opcheck(ops.linear_leaky_relu2.default, (x, w1)))
    assert all_success(torch.library.opcheck(ops.leaky_relu2_mlp.default, (x, w1, w2)))
    grad_args = (rand(12, 16, seed=11), rand(24, 16, seed=12), rand(12, 24, seed=13))
    assert all_success(torch.library.opcheck(ops.leaky_relu2_grad.default, grad_args))


def test_softcapped_ce_op_gradient_matches_autograd():
    logits = rand(17, 40, seed=14, scale=25.0, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 40, (17,), generator=torch.Generator().manual_seed(15))
    targets[4] = -100
    losses, lse = torch.ops.pgolf_kernels.softcapped_ce(logits, targets, 30.0)
    assert losses[4] == 0 and not lse.requires_grad
    (losses.sum() / 16).backward()
    got = logits.grad.clone()
    logits.grad = None
    K._eager_softcapped_ce(logits, targets, 30.0).backward()  # mean over the 16 counted rows
    assert rel(got, logits.grad) < 1e-6


def test_mlp_op_gradients_match_autograd():
    x, w1, w2 = (t.requires_grad_() for t in (rand(12, 16, seed=16, dtype=torch.float64),
                                              rand(24, 16, seed=17, dtype=torch.float64),
                                              rand(16, 24, seed=18, dtype=torch.float64)))
    gy = rand(12, 16, seed=19, dtype=torch.float64)
    gh = rand(12, 24, seed=20, dtype=torch.float64)
    y = torch.ops.pgolf_kernels.leaky_relu2_mlp(x, w1, w2)[0]
    h = torch.ops.pgolf_kernels.linear_leaky_relu2(x, w1)[0]
    ((y * gy).sum() + (h * gh).sum()).backward()
    got = [t.grad.clone() for t in (x, w1, w2)]
    for t in (x, w1, w2):
        t.grad = None
    h_ref = K._eager_leaky_relu2(x @ w1.t())
    ((h_ref @ w2.t() * gy).sum() + (h_ref * gh).sum()).backward()
    for g, t in zip(got, (x, w1, w2)):
        assert rel(g, t.grad) < 1e-10


def test_ops_trace_with_fullgraph():
    """dynamo + AOTAutograd (aot_eager) through the ops as the compiled model calls them."""

    def f(x, w1, w2, logits, targets):
        losses, _ = torch.ops.pgolf_kernels.softcapped_ce(logits, targets, 30.0)
        h = torch.ops.pgolf_kernels.linear_leaky_relu2(x, w1)[0]
        y = torch.ops.pgolf_kernels.leaky_relu2_mlp(x, w1, w2)[0]
        return losses.mean() + h.square().mean() + y.square().mean()

    args = [rand(12, 16, seed=21).requires_grad_(), rand(24, 16, seed=22).requires_grad_(),
            rand(16, 24, seed=23).requires_grad_(), rand(8, 30, seed=24, scale=10).requires_grad_(),
            torch.arange(8) * 3]
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    out.backward()
    got = [t.grad.clone() for t in args[:4]]
    for t in args[:4]:
        t.grad = None
    ref = f(*args)
    ref.backward()
    assert torch.allclose(out, ref)
    for g, t in zip(got, args[:4]):
        assert torch.allclose(g, t.grad, rtol=1e-5, atol=1e-7)


# --- Triton in the packed file ------------------------------------------------------------------


@pytest.mark.skipif(K.triton is None, reason="triton not importable (CPU CI): no kernels are defined")
def test_triton_jit_gets_its_source_inside_the_packed_bundle(tmp_path):
    """The packed file execs the bundle from a string registered in linecache; @triton.jit reads
    its function's source with inspect at decoration time and hashes it for its cache."""
    packed = tmp_path / "train_gpt.py"
    packed.write_text(pack_source(bundle_source()), encoding="utf-8")
    check = textwrap.dedent(f"""
        import inspect, runpy
        from triton.runtime.jit import JITFunction
        ns = runpy.run_path({str(packed)!r}, run_name="pgolf_bundle_check")  # not __main__: no training
        kernels = {{k: v for k, v in ns.items() if isinstance(v, JITFunction)}}
        assert len(kernels) >= 4, sorted(kernels)
        for name, fn in kernels.items():
            assert fn.src.lstrip().startswith("def " + name), (name, fn.src[:80])
            assert "def " + name in inspect.getsource(fn.fn)
            assert len(fn.cache_key) == 64  # the source parsed and hashed
        print(sorted(kernels))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    p = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "_softcapped_ce_fwd_kernel" in p.stdout and "_mm_leaky_relu2_tma_kernel" in p.stdout


def test_public_functions_take_the_eager_path_for_unsupported_inputs():
    # fp64 on CPU, odd widths: always the definition (no kernel launch attempted)
    x, w = rand(4, 7, seed=30, dtype=torch.float64), rand(5, 7, seed=31, dtype=torch.float64)
    assert torch.allclose(linear_leaky_relu2(x, w), F.leaky_relu(x @ w.t(), 0.5) ** 2)
    assert not K._mlp_shapes_ok(x.bfloat16(), w.bfloat16())  # 7 columns: rows not 16-byte aligned
    assert K._mlp_shapes_ok(rand(4, 8).bfloat16(), rand(16, 8).bfloat16())
