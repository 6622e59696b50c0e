"""Fused kernels of the 1.0611 stack, with the eager definitions they must match.

``softcapped_cross_entropy``: mean cross-entropy of ``softcap * tanh(logits / softcap)``. On CUDA a
Triton kernel reads each row of raw logits once, caps them in registers and keeps a running
log-sum-exp (forward: per-row loss and lse; backward: the gradient of the capped loss from the
logits and the saved lse, in one more pass), instead of materialising capped float32 copies.
``linear_leaky_relu2``: ``leaky_relu(x @ W.T, 0.5) ** 2``, the MLP's up-projection with the
activation in the GEMM's epilogue (it writes the pre-activation, kept for the backward, and the
activation in one pass). ``leaky_relu2_mlp``: the whole MLP, ``proj(leaky_relu2(fc(x)))``, whose
backward also fuses the activation's derivative into the epilogue of the GEMM that computes the
gradient of the hidden activation (the reference's design).

The Triton kernels run behind ``torch.library`` custom ops (``pgolf_kernels::softcapped_ce``,
``softcapped_ce_bwd``, ``linear_leaky_relu2``, ``leaky_relu2_mlp``, ``leaky_relu2_grad``), so
``torch.compile`` traces them as opaque calls; on CPU the same ops run eager stand-ins. Triton is
optional (CPU CI has none): its import is guarded and the kernels are defined only when it
imports. ``enable_fused_kernels(device)`` runs a self-test of each kernel on small random inputs
against the eager definition and switches on only those that pass (it runs by itself at the first
eager CUDA call; call it before compiling the model, as a compiled graph cannot run it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: the fused kernels need Triton (CUDA only)
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - no Triton: the eager definitions run
    triton = None
try:  # host-side TMA descriptors (Triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # noqa: BLE001
    TensorDescriptor = None

# per kernel: "" not tested yet, "on:<variant>" in use, "off: <reason>"
_KERNEL_STATE: dict[str, str] = {"ce": "", "mlp": ""}
CE_BLOCK = 1024  # columns per step of the row loop (8 steps for the 8192-token vocabulary)
# GEMM tiles: (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps); the epilogue writes two
# BLOCK_N/2-wide halves, so every TMA box is 64 bf16 = 128 bytes wide
MLP_TILES = (128, 128, 64, 4, 8)


# ---------------------------------------------------------------------------------------------
# the eager definitions


def _eager_softcapped_ce(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    capped = softcap * torch.tanh(logits.float() / softcap)
    return F.cross_entropy(capped, targets)


def _eager_leaky_relu2(pre: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(pre, negative_slope=0.5).square()


def _leaky_relu2_slope(pre: torch.Tensor) -> torch.Tensor:
    """d/dpre of leaky_relu(pre, 0.5)^2: 2*pre where pre > 0, else 2*(0.5*pre)*0.5 = 0.5*pre."""
    return torch.where(pre > 0, 2.0 * pre, 0.5 * pre)


# ---------------------------------------------------------------------------------------------
# Triton kernels


if triton is not None:

    @triton.jit
    def _softcapped_ce_fwd_kernel(logits_ptr, targets_ptr, loss_ptr, lse_ptr, n_cols, row_stride,
                                  softcap, BLOCK: tl.constexpr):
        # one program per row; z = c * tanh(x / c) = c * (2 * sigmoid(2x / c) - 1)
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        two_over_c = 2.0 / softcap
        run_max = -float("inf")
        run_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            x = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
            z = softcap * (2.0 * tl.sigmoid(x * two_over_c) - 1.0)
            z = tl.where(inside, z, -float("inf"))
            new_max = tl.maximum(run_max, tl.max(z, axis=0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            run_max = new_max
        lse = run_max + tl.log(run_sum)
        target = tl.load(targets_ptr + row)
        valid = (target >= 0) & (target < n_cols)  # anything else (ignore_index -100) scores 0
        xt = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)
        zt = softcap * (2.0 * tl.sigmoid(xt * two_over_c) - 1.0)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, tl.where(valid, lse - zt, 0.0))

    @triton.jit
    def _softcapped_ce_bwd_kernel(logits_ptr, targets_ptr, lse_ptr, grad_loss_ptr, grad_ptr, n_cols,
                                  row_stride, grad_row_stride, softcap, BLOCK: tl.constexpr):
        # dloss/dx = g * (softmax(z) - onehot(target)) * dz/dx, dz/dx = 1 - tanh^2 = 4 s (1 - s)
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        out = grad_ptr + row * grad_row_stride
        lse = tl.load(lse_ptr + row)
        target = tl.load(targets_ptr + row)
        valid = (target >= 0) & (target < n_cols)
        g = tl.where(valid, tl.load(grad_loss_ptr + row), 0.0)
        two_over_c = 2.0 / softcap
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            x = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
            s = tl.sigmoid(x * two_over_c)
            z = softcap * (2.0 * s - 1.0)
            p = tl.exp(z - lse)
            dz = g * (p - tl.where(cols == target, 1.0, 0.0))
            tl.store(out + cols, (dz * 4.0 * s * (1.0 - s)).to(grad_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _mm_leaky_relu2_tma_kernel(a_desc, b_desc, c_desc, d_desc, M, N, K, BLOCK_M: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                                   GRAD: tl.constexpr):
        # acc = A[M, K] @ B[N, K]^T for one tile. Forward (GRAD=False): c := acc (the
        # pre-activation, bf16), d := leaky_relu(c, 0.5)^2. GRAD=True: c holds the saved
        # pre-activation (read), d := acc * (2c if c > 0 else c/2).
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n  # row tiles visited together: the B tiles stay in L2
        first_m = (pid // per_group) * GROUP_M
        rows = tl.minimum(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (pid % per_group) % rows) * BLOCK_M
        off_n = ((pid % per_group) // rows) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kk in range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([off_m, kk * BLOCK_K])
            b = b_desc.load([off_n, kk * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        # the two column halves of the tile (rows beyond M or columns beyond N: TMA clips)
        acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        half = BLOCK_N // 2
        out_ty = d_desc.dtype
        if GRAD:
            pre0 = c_desc.load([off_m, off_n]).to(tl.float32)
            pre1 = c_desc.load([off_m, off_n + half]).to(tl.float32)
            d_desc.store([off_m, off_n], (acc0 * tl.where(pre0 > 0, 2.0 * pre0, 0.5 * pre0)).to(out_ty))
            d_desc.store([off_m, off_n + half],
                         (acc1 * tl.where(pre1 > 0, 2.0 * pre1, 0.5 * pre1)).to(out_ty))
        else:
            pre0 = acc0.to(out_ty)
            pre1 = acc1.to(out_ty)
            c_desc.store([off_m, off_n], pre0)
            c_desc.store([off_m, off_n + half], pre1)
            y0 = pre0.to(tl.float32)  # the activation of the stored (rounded) value, as eager
            y1 = pre1.to(tl.float32)
            y0 = tl.where(y0 > 0, y0, 0.5 * y0)
            y1 = tl.where(y1 > 0, y1, 0.5 * y1)
            d_desc.store([off_m, off_n], (y0 * y0).to(out_ty))
            d_desc.store([off_m, off_n + half], (y1 * y1).to(out_ty))

    @triton.jit
    def _mm_leaky_relu2_ptr_kernel(a_ptr, b_ptr, c_ptr, d_ptr, M, N, K, stride_a, stride_b, stride_c,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                   GROUP_M: tl.constexpr, GRAD: tl.constexpr):
        # the same tile computation with plain masked loads (GPUs or Tritons without TMA)
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        rows = tl.minimum(tiles_m - first_m, GROUP_M)
        rm = (first_m + (pid % per_group) % rows) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = ((pid % per_group) // rows) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_a + rk[None, :]
        b_ptrs = b_ptr + rn[:, None].to(tl.int64) * stride_b + rk[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kk in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - kk * BLOCK_K
            a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(rn[:, None] < N) & (rk[None, :] < k_left), other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        offs = rm[:, None].to(tl.int64) * stride_c + rn[None, :]
        inside = (rm[:, None] < M) & (rn[None, :] < N)
        out_ty = d_ptr.dtype.element_ty
        if GRAD:
            pre = tl.load(c_ptr + offs, mask=inside, other=0.0).to(tl.float32)
            dpre = acc * tl.where(pre > 0, 2.0 * pre, 0.5 * pre)
            tl.store(d_ptr + offs, dpre.to(out_ty), mask=inside)
        else:
            pre = acc.to(out_ty)
            tl.store(c_ptr + offs, pre, mask=inside)
            y = pre.to(tl.float32)
            y = tl.where(y > 0, y, 0.5 * y)
            tl.store(d_ptr + offs, (y * y).to(out_ty), mask=inside)


# ---------------------------------------------------------------------------------------------
# launchers (real tensors only)

_LAUNCH: dict = {"mlp_variant": "tma", "poison": False}  # poison: NaN-fill outputs first (tests)


def _new_output(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    t = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    if _LAUNCH["poison"]:
        t.fill_(float("nan"))
    return t


def _launch_softcapped_ce(logits: torch.Tensor, targets: torch.Tensor, softcap: float):
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    n, v = logits.shape
    losses = _new_output((n,), logits, torch.float32)
    lse = _new_output((n,), logits, torch.float32)
    if n > 0:
        _softcapped_ce_fwd_kernel[(n,)](logits, targets.contiguous(), losses, lse, v, logits.stride(0),
                                        float(softcap), BLOCK=CE_BLOCK, num_warps=4)
    return losses, lse


def _launch_softcapped_ce_bwd(logits, targets, lse, grad_losses, softcap):
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    n, v = logits.shape
    grad = _new_output((n, v), logits)
    if n > 0:
        _softcapped_ce_bwd_kernel[(n,)](logits, targets.contiguous(), lse.contiguous(),
                                        grad_losses.contiguous().float(), grad, v, logits.stride(0),
                                        grad.stride(0), float(softcap), BLOCK=CE_BLOCK, num_warps=4)
    return grad


def _contig16(t: torch.Tensor) -> torch.Tensor:
    """Contiguous with a 16-byte aligned start, as TMA descriptors require (a view that starts
    mid-row is copied)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _launch_mm_leaky_relu2(a: torch.Tensor, b: torch.Tensor, pre: torch.Tensor | None):
    """Forward (pre None): (pre, post) = (a @ b.T, leaky_relu2(a @ b.T)); else (a @ b.T) * slope(pre).
    a [M, K], b [N, K], pre [M, N]: one 16-bit float dtype."""
    a, b = _contig16(a), _contig16(b)
    m, k = a.shape
    n = b.size(0)
    grad = pre is not None
    if grad:
        pre = _contig16(pre)
    else:
        pre = _new_output((m, n), a)
    out = _new_output((m, n), a)
    if m == 0 or n == 0:
        return out if grad else (pre, out)
    if k == 0:  # an empty sum: the GEMM is zero
        out.zero_()
        if not grad:
            pre.zero_()
        return out if grad else (pre, out)
    bm, bn, bk, stages, warps = MLP_TILES
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    if _LAUNCH["mlp_variant"] == "tma":
        descs = (TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
                 TensorDescriptor.from_tensor(pre, [bm, bn // 2]),
                 TensorDescriptor.from_tensor(out, [bm, bn // 2]))
        _mm_leaky_relu2_tma_kernel[grid](*descs, m, n, k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                                         GRAD=grad, num_stages=stages, num_warps=warps)
    else:
        _mm_leaky_relu2_ptr_kernel[grid](a, b, pre, out, m, n, k, a.stride(0), b.stride(0), out.stride(0),
                                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, GRAD=grad,
                                         num_stages=3, num_warps=warps)
    return out if grad else (pre, out)


# ---------------------------------------------------------------------------------------------
# custom ops (a CPU tensor runs the eager stand-in: the ops are testable anywhere)


def _ce_fwd_impl(logits, targets, softcap):
    if logits.is_cuda:
        return _launch_softcapped_ce(logits, targets, softcap)
    z = softcap * torch.tanh(logits.float() / softcap)
    lse = torch.logsumexp(z, dim=-1)
    valid = (targets >= 0) & (targets < z.size(-1))
    zt = z.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    return torch.where(valid, lse - zt, 0.0), lse


def _ce_fwd_fake(logits, targets, softcap):
    n = logits.size(0)
    return logits.new_empty((n,), dtype=torch.float32), logits.new_empty((n,), dtype=torch.float32)


def _ce_bwd_impl(logits, targets, lse, grad_losses, softcap):
    if logits.is_cuda:
        return _launch_softcapped_ce_bwd(logits, targets, lse, grad_losses, softcap)
    t = torch.tanh(logits.float() / softcap)
    p = torch.exp(softcap * t - lse[:, None])
    valid = (targets >= 0) & (targets < p.size(-1))
    p = p - F.one_hot(torch.where(valid, targets, 0), p.size(-1)).to(p.dtype) * valid[:, None]
    g = torch.where(valid, grad_losses.float(), 0.0)
    return (g[:, None] * p * (1.0 - t * t)).to(logits.dtype)


def _ce_bwd_fake(logits, targets, lse, grad_losses, softcap):
    return logits.new_empty(logits.shape)


def _ce_setup_context(ctx, inputs, output) -> None:
    logits, targets, softcap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap = float(softcap)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _ce_backward(ctx, grad_losses, _grad_lse):
    if grad_losses is None:
        return None, None, None
    logits, targets, lse = ctx.saved_tensors
    grad = torch.ops.pgolf_kernels.softcapped_ce_bwd(logits, targets, lse, grad_losses, ctx.softcap)
    return grad, None, None


def _llr2_impl(x, w):
    if x.is_cuda:
        pre, post = _launch_mm_leaky_relu2(x, w, None)
        return post, pre
    pre = x @ w.t()
    return _eager_leaky_relu2(pre), pre


def _llr2_fake(x, w):
    shape = (x.size(0), w.size(0))
    return x.new_empty(shape), x.new_empty(shape)


def _llr2_setup_context(ctx, inputs, output) -> None:
    x, w = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _llr2_backward(ctx, grad_post, _grad_pre):
    if grad_post is None:
        return None, None
    x, w, pre = ctx.saved_tensors
    dpre = grad_post * _leaky_relu2_slope(pre)  # one pointwise kernel in the compiled backward
    return dpre @ w, dpre.t() @ x


def _lr2_grad_impl(g, w_t, pre):
    if g.is_cuda:
        return _launch_mm_leaky_relu2(g, w_t, pre)
    return (g @ w_t.t()) * _leaky_relu2_slope(pre)


def _lr2_grad_fake(g, w_t, pre):
    return g.new_empty((g.size(0), w_t.size(0)))


def _mlp_impl(x, w1, w2):
    post, pre = _llr2_impl(x, w1)
    return post @ w2.t(), pre, post


def _mlp_fake(x, w1, w2):
    hidden = (x.size(0), w1.size(0))
    return x.new_empty((x.size(0), w2.size(0))), x.new_empty(hidden), x.new_empty(hidden)


def _mlp_setup_context(ctx, inputs, output) -> None:
    x, w1, w2 = inputs
    _, pre, post = output
    ctx.save_for_backward(x, w1, w2, pre, post)
    ctx.mark_non_differentiable(pre, post)
    ctx.set_materialize_grads(False)


def _mlp_backward(ctx, grad_out, _grad_pre, _grad_post):
    if grad_out is None:
        return None, None, None
    x, w1, w2, pre, post = ctx.saved_tensors
    g = grad_out.contiguous()
    dw2 = g.t() @ post
    dpre = torch.ops.pgolf_kernels.leaky_relu2_grad(g, w2.t().contiguous(), pre)  # (g @ w2) * slope(pre)
    return dpre @ w1, dpre.t() @ x, dw2


def _kernel_custom_op(qualname: str, schema: str, impl, fake, backward=None, setup=None) -> None:
    """Define ``qualname`` once per process (the packed bundle and trainer.kernels may both be
    loaded in one interpreter: the later definition reuses the first, which is the same code)."""
    ns, name = qualname.split("::")
    if getattr(getattr(torch.ops, ns), name, None) is not None:
        return
    op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup)


_kernel_custom_op("pgolf_kernels::softcapped_ce",
                  "(Tensor logits, Tensor targets, float softcap) -> (Tensor, Tensor)",
                  _ce_fwd_impl, _ce_fwd_fake, _ce_backward, _ce_setup_context)
_kernel_custom_op("pgolf_kernels::softcapped_ce_bwd",
                  "(Tensor logits, Tensor targets, Tensor lse, Tensor grad_losses, float softcap) -> Tensor",
                  _ce_bwd_impl, _ce_bwd_fake)
_kernel_custom_op("pgolf_kernels::linear_leaky_relu2", "(Tensor x, Tensor w) -> (Tensor, Tensor)",
                  _llr2_impl, _llr2_fake, _llr2_backward, _llr2_setup_context)
_kernel_custom_op("pgolf_kernels::leaky_relu2_grad", "(Tensor g, Tensor w_t, Tensor pre) -> Tensor",
                  _lr2_grad_impl, _lr2_grad_fake)
_kernel_custom_op("pgolf_kernels::leaky_relu2_mlp",
                  "(Tensor x, Tensor w1, Tensor w2) -> (Tensor, Tensor, Tensor)",
                  _mlp_impl, _mlp_fake, _mlp_backward, _mlp_setup_context)


# ---------------------------------------------------------------------------------------------
# selection and self-test


def _fused_on(kind: str, t: torch.Tensor) -> bool:
    if not t.is_cuda:
        return False
    if _KERNEL_STATE[kind] == "" and not torch.compiler.is_compiling():
        enable_fused_kernels(t.device)
    return _KERNEL_STATE[kind].startswith("on")


def _mlp_shapes_ok(x: torch.Tensor, *ws: torch.Tensor) -> bool:
    # 16-bit floats (the kernels accumulate in float32 and write x's dtype); every row 16-byte
    # aligned for the TMA descriptors (dims multiples of 8)
    return (x.dtype in (torch.bfloat16, torch.float16) and x.numel() > 0 and x.size(-1) % 8 == 0
            and all(w.dtype == x.dtype and w.size(0) % 8 == 0 for w in ws))


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _selftest_ce(device: torch.device) -> str | None:
    """None if the fused cross-entropy matches the eager definition (loss and gradient)."""
    g = torch.Generator(device=device).manual_seed(11)
    for dtype, cols in ((torch.bfloat16, 1000), (torch.float32, 2500)):  # ragged last block
        logits = (torch.randn(37, cols, generator=g, device=device) * 20).to(dtype)
        targets = torch.randint(0, cols, (37,), generator=g, device=device)
        targets[5] = -100  # an ignored row
        a = logits.clone().requires_grad_()
        loss = softcapped_cross_entropy(a, targets, 30.0)
        loss.backward()
        b = logits.float().requires_grad_()
        ref = _eager_softcapped_ce(b, targets, 30.0)
        ref.backward()
        errs = (abs(float(loss) - float(ref)) / abs(float(ref)), _rel(a.grad, b.grad))
        if not (errs[0] < 1e-4 and errs[1] < 2e-2):
            return f"{dtype}: loss error {errs[0]:.3g}, gradient error {errs[1]:.3g}"
    return None


def _selftest_mlp(device: torch.device) -> str | None:
    """None if both fused MLP ops match the eager definitions (output and gradients)."""
    g = torch.Generator(device=device).manual_seed(12)
    mk = lambda *s: torch.randn(*s, generator=g, device=device).to(torch.bfloat16)  # noqa: E731
    x, w1, w2, gy = mk(300, 128), mk(384, 128) * 0.1, mk(128, 384) * 0.1, mk(300, 128)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
    fused_h = linear_leaky_relu2(leaves[0], leaves[1])
    fused_y = leaky_relu2_mlp(*leaves)
    (fused_h.float().sum() * 1e-3 + (fused_y * gy).float().sum()).backward()
    refs = [t.float().requires_grad_() for t in (x, w1, w2)]
    ref_h = _eager_leaky_relu2(refs[0] @ refs[1].t())
    ref_y = ref_h @ refs[2].t()
    (ref_h.sum() * 1e-3 + (ref_y * gy.float()).sum()).backward()
    pairs = {"hidden": (fused_h, ref_h), "out": (fused_y, ref_y), "dx": (leaves[0].grad, refs[0].grad),
             "dw1": (leaves[1].grad, refs[1].grad), "dw2": (leaves[2].grad, refs[2].grad)}
    for name, (a, r) in pairs.items():
        e = _rel(a, r)
        if not e < 2e-2:
            return f"{name}: relative error {e:.3g}"
    return None


def enable_fused_kernels(device: torch.device) -> dict[str, str]:
    """Self-test the fused kernels on ``device`` and switch on those that match the eager
    definitions; returns the state per kernel ("on:<variant>" or "off: <reason>")."""
    if device.type != "cuda":
        _KERNEL_STATE.update(ce="off: needs CUDA", mlp="off: needs CUDA")
        return dict(_KERNEL_STATE)
    if triton is None:
        _KERNEL_STATE.update(ce="off: triton not importable", mlp="off: triton not importable")
        return dict(_KERNEL_STATE)
    with torch.cuda.device(device):
        _KERNEL_STATE["ce"] = "on:triton"  # the self-test calls the public function
        err = _run_selftest(_selftest_ce, device)
        _KERNEL_STATE["ce"] = "on:triton" if err is None else f"off: self-test: {err}"
        reasons = []
        for variant in ("tma", "ptr"):
            if variant == "tma" and TensorDescriptor is None:
                reasons.append("tma: no triton.tools.tensor_descriptor")
                continue
            _LAUNCH["mlp_variant"] = variant
            _KERNEL_STATE["mlp"] = f"on:{variant}"
            err = _run_selftest(_selftest_mlp, device)
            if err is None:
                break
            reasons.append(f"{variant}: {err}")
            _KERNEL_STATE["mlp"] = "off: self-test: " + "; ".join(reasons)
    return dict(_KERNEL_STATE)


def _run_selftest(test, device: torch.device) -> str | None:
    try:
        err = test(device)
        torch.cuda.synchronize(device)
        return err
    except Exception as e:  # noqa: BLE001 - a kernel that does not build or run is switched off
        msg = " ".join(str(e).split())
        return f"{type(e).__name__}: {msg[:200]}"


def disable_fused_kernels(reason: str = "disabled") -> None:
    """Use the eager definitions everywhere (benchmarks: the unfused baseline)."""
    _KERNEL_STATE.update(ce=f"off: {reason}", mlp=f"off: {reason}")


def fused_kernel_status() -> dict[str, str]:
    """The state per kernel, for the logs ("" until tested)."""
    return dict(_KERNEL_STATE)


# ---------------------------------------------------------------------------------------------
# the public functions


def softcapped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Mean cross-entropy over rows of raw ``logits`` [N, V] after the tanh softcap; targets [N]
    (rows whose target is -100 are left out of the mean, as F.cross_entropy does)."""
    if _fused_on("ce", logits) and logits.dtype in (torch.bfloat16, torch.float16, torch.float32):
        losses, _ = torch.ops.pgolf_kernels.softcapped_ce(logits, targets, float(softcap))
        counted = (targets != -100).sum().clamp_min(1)
        return losses.sum() / counted
    return _eager_softcapped_ce(logits, targets, softcap)


def linear_leaky_relu2(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x @ weight.T, 0.5) ** 2`` for x [..., in], weight [hidden, in]."""
    w = weight.to(x.dtype)
    if _fused_on("mlp", x) and _mlp_shapes_ok(x, w):
        post, _ = torch.ops.pgolf_kernels.linear_leaky_relu2(x.reshape(-1, x.size(-1)), w)
        return post.view(*x.shape[:-1], w.size(0))
    return _eager_leaky_relu2(F.linear(x, w))


def leaky_relu2_mlp(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x @ fc.T, 0.5) ** 2 @ proj.T`` for fc [hidden, in], proj [out, hidden]."""
    w1, w2 = fc_weight.to(x.dtype), proj_weight.to(x.dtype)
    if _fused_on("mlp", x) and _mlp_shapes_ok(x, w1, w2) and w2.size(1) == w1.size(0):
        out, _, _ = torch.ops.pgolf_kernels.leaky_relu2_mlp(x.reshape(-1, x.size(-1)), w1, w2)
        return out.view(*x.shape[:-1], w2.size(0))
    return F.linear(_eager_leaky_relu2(F.linear(x, w1)), w2)
