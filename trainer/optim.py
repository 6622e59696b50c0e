"""Optimizers and schedules: MuonEq-R for the block matrices, AdamW for embeddings and scalars.

MuonEq-R is Muon (Nesterov momentum, then the update replaced by an approximately orthogonal
matrix from 5 Newton-Schulz steps, bf16 on GPU) with each row of the update normalised first.
MUON_NS picks the Newton-Schulz coefficients: ``fixed`` (Keller Jordan's quintic, the same every
step) or ``polar`` (Polar Express: a minimax-optimal tuple per step, PR #1344 / #1787).
The ``baseline`` optimizer is the naive script's: plain Muon (no row normalisation, no weight
decay) and Adam.

Distributed (``TrainOptimizers.sync_and_clip`` then ``step``): the Muon matrices are split between
the ranks, same-shape matrices in contiguous runs; one reduce-scatter gives each rank the averaged
gradients of its own matrices only, it keeps their momentum and orthogonalises them (batched by
shape), and one all-gather hands every rank all the updates. Every other gradient (embeddings,
scalars) is averaged by one flat all-reduce. Gradient clipping uses the global norm of the
averaged gradients, so the step is the same for any number of ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn as nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton-Schulz coefficients (Keller Jordan's Muon)
# Polar Express (Amsel et al. 2025): per-iteration coefficients for 5 steps; asking for more steps
# runs these 5 (as the 1.0611 record does)
NS_POLAR_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def ns_schedule(kind: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each Newton-Schulz iteration for MUON_NS=``kind``."""
    if kind == "fixed":
        return (NS_COEFFS,) * steps
    if kind == "polar":
        return NS_POLAR_COEFFS[:steps]
    raise ValueError(f"MUON_NS={kind!r}: expected fixed or polar")


def newton_schulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, kind: str = "fixed") -> torch.Tensor:
    """Approximate orthogonalisation U V^T of each matrix in ``g`` ([..., m, n]); bf16 on CUDA."""
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in ns_schedule(kind, steps):
        A = x @ x.mT
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x if wide else x.mT


def _dist_world() -> tuple[int, int]:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size(), tdist.get_rank()
    return 1, 0


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor, async_op: bool = False):
    fn = getattr(tdist, "reduce_scatter_single", None) or tdist.reduce_scatter_tensor
    return fn(out, inp, async_op=async_op)


def _all_gather(out: torch.Tensor, inp: torch.Tensor, async_op: bool = False):
    fn = getattr(tdist, "all_gather_single", None) or tdist.all_gather_into_tensor
    return fn(out, inp, async_op=async_op)


class Muon(torch.optim.Optimizer):
    """Muon / MuonEq-R over 2-D parameters (one param group).

    In a distributed run, position ``p`` of a same-shape bucket of ``n`` matrices belongs to rank
    ``p // ceil(n / world)``; ``reduce_grads()`` must run before ``step()`` (``TrainOptimizers``
    does it), and only the owner keeps a matrix's momentum.
    """

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, row_normalize: bool = False, ns: str = "fixed"):
        ns_schedule(ns, 1)  # a clear error now for an unknown MUON_NS
        super().__init__(list(params), dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                            nesterov=nesterov, weight_decay=weight_decay,
                                            row_normalize=row_normalize, ns=ns))
        if len(self.param_groups) != 1:
            raise ValueError("Muon takes one parameter group")
        for p in self.param_groups[0]["params"]:
            if p.ndim != 2:
                raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")
        self._layout: dict | None = None
        self._owned_grads: torch.Tensor | None = None

    # --- layout: which rank owns which matrix, where it sits in the flat buffers ----------------
    def _plan(self, world: int, rank: int) -> dict:
        if self._layout is not None and self._layout["world"] == world and self._layout["rank"] == rank:
            return self._layout
        params = self.param_groups[0]["params"]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        buckets, off = [], 0
        for shape in sorted(by_shape):
            idx = by_shape[shape]
            per = -(-len(idx) // world)  # matrices per rank (the last ranks may own fewer)
            buckets.append({"shape": shape, "idx": idx, "per": per, "off": off})
            off += per * shape[0] * shape[1]
        self._layout = {"world": world, "rank": rank, "buckets": buckets, "per_rank": off}
        return self._layout

    def reduce_grads(self, async_op: bool = False):
        """Distributed: reduce-scatter the gradients so this rank holds the mean gradient of each
        matrix it owns (missing gradients count as zeros). Returns the work handle when async."""
        world, rank = _dist_world()
        self._owned_grads = None
        if world == 1:
            return None
        lay = self._plan(world, rank)
        params = self.param_groups[0]["params"]
        ref = params[0]
        parts = []
        for r in range(world):
            for b in lay["buckets"]:
                size = b["shape"][0] * b["shape"][1]
                for pos in range(r * b["per"], (r + 1) * b["per"]):
                    g = params[b["idx"][pos]].grad if pos < len(b["idx"]) else None
                    parts.append(g.reshape(-1) if g is not None else torch.zeros(size, dtype=ref.dtype,
                                                                                  device=ref.device))
        send = torch.cat(parts)
        self._owned_grads = torch.empty(lay["per_rank"], dtype=send.dtype, device=send.device)
        return _reduce_scatter(self._owned_grads, send, async_op=async_op)

    def owned_grads(self) -> torch.Tensor | None:
        """The flat summed gradients of this rank's matrices after ``reduce_grads`` (None alone)."""
        return self._owned_grads

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        params = group["params"]
        world, rank = _dist_world()
        if world > 1 and self._owned_grads is None:
            raise RuntimeError("Muon.step in a distributed run needs reduce_grads() first")
        lay = self._plan(world, rank)
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        ref = params[0]
        upd_dtype = torch.bfloat16 if ref.is_cuda else torch.float32
        send = torch.zeros(lay["per_rank"], dtype=upd_dtype, device=ref.device) if world > 1 else None
        targets: list[torch.Tensor] = []
        updates: list[torch.Tensor] = []
        for b in lay["buckets"]:
            rows, cols = b["shape"]
            size = rows * cols
            lo, hi = rank * b["per"], min((rank + 1) * b["per"], len(b["idx"]))
            if hi <= lo:
                continue
            mine = [params[b["idx"][pos]] for pos in range(lo, hi)]
            if world > 1:
                flat = self._owned_grads[b["off"]:b["off"] + (hi - lo) * size]
                grads = list(flat.view(hi - lo, rows, cols).unbind(0))
            else:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in mine]
            bufs = []
            for p, g in zip(mine, grads):
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(g)
                bufs.append(st["momentum_buffer"])
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
            upd = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
            G = torch.stack(upd)
            if group["row_normalize"]:  # MuonEq-R: equalise the rows before orthogonalising
                G = G / G.norm(dim=-1, keepdim=True).clamp_min(1e-7)
            out = newton_schulz5(G, group["backend_steps"], kind=group["ns"]) * max(1.0, rows / cols) ** 0.5
            if world > 1:
                send[b["off"]:b["off"] + (hi - lo) * size].copy_(out.reshape(-1))
            else:
                targets.extend(mine)
                updates.extend(out.unbind(0))
        if world > 1:  # every rank gets every update
            full = torch.empty(world * lay["per_rank"], dtype=upd_dtype, device=ref.device)
            _all_gather(full, send)
            for b in lay["buckets"]:
                rows, cols = b["shape"]
                size = rows * cols
                for pos, i in enumerate(b["idx"]):
                    r, j = divmod(pos, b["per"])
                    start = r * lay["per_rank"] + b["off"] + j * size
                    targets.append(params[i])
                    updates.append(full[start:start + size].view(rows, cols))
            self._owned_grads = None
        if not targets:
            return None
        if wd > 0:
            torch._foreach_mul_(targets, 1.0 - lr * wd)
        torch._foreach_add_(targets, [u.to(p.dtype) for u, p in zip(updates, targets)], alpha=-lr)
        return None


# names of parameters that are never Muon matrices even when 2-D
_SCALAR_NAME_PARTS = ("resid_mix", "skip_weights", "skip_gates", "attn_gate", "out_gate", "lane_", "smear",
                      "q_gain", "attn_scale", "mlp_scale", "scale")


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The model's parameters by optimizer group: ``matrix`` (Muon), ``embed``, ``head``, ``scalar``."""
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"matrix": [], "embed": [], "head": [], "scalar": []}
    for name, p in model.named_parameters():
        if name in ("tok_emb.weight", "bigram.embed.weight"):
            key = "embed"
        elif name == "lm_head.weight":
            key = "head"
        elif (p.ndim == 2 and id(p) in linear_weights and min(p.shape) > 1
              and not any(part in name for part in _SCALAR_NAME_PARTS)):
            key = "matrix"
        else:
            key = "scalar"
        groups[key].append((name, p))
    return groups


class TrainOptimizers:
    """The trainer's optimizers as one: gradient sync + clip, step, LR scale, Muon momentum, state."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], muon: Muon | None):
        self.optimizers = optimizers
        self.muon = muon
        # parameters whose gradients every rank keeps whole (all but Muon's)
        self.replicated = [p for opt in optimizers if opt is not muon
                           for g in opt.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def set_lr_scale(self, scale: float) -> None:
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale

    def set_muon_momentum(self, momentum: float) -> None:
        if self.muon is not None:
            for g in self.muon.param_groups:
                g["momentum"] = momentum

    @torch.no_grad()
    def sync_and_clip(self, max_norm: float) -> None:
        """Average the gradients over the ranks (Muon's: reduce-scattered to their owners; the rest:
        one flat all-reduce, both in flight together), then clip them to global norm ``max_norm``
        (0 = no clipping). In one process: plain clipping."""
        world, _ = _dist_world()
        all_params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        if world == 1:
            for p in all_params:  # as in a distributed run: an unused parameter steps with zeros
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if max_norm > 0:
                torch.nn.utils.clip_grad_norm_(all_params, max_norm)
            return
        rs = self.muon.reduce_grads(async_op=True) if self.muon is not None else None
        rep = None
        if self.replicated:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.replicated]
            rep = torch.cat([g.reshape(-1) for g in grads])
            ar = tdist.all_reduce(rep, async_op=True)
        if rs is not None:
            rs.wait()
        if rep is not None:
            ar.wait()
            rep.div_(world)
            off = 0
            for p in self.replicated:  # the gradients become views of the averaged buffer
                n = p.numel()
                p.grad = rep[off:off + n].view_as(p)
                off += n
        owned = self.muon.owned_grads() if self.muon is not None else None
        if owned is not None:
            owned.div_(world)
        if max_norm <= 0:
            return
        # global norm: the owned Muon shards are disjoint (sum over ranks), the rest is replicated
        sq = owned.float().pow(2).sum() if owned is not None else torch.zeros((), device=all_params[0].device)
        tdist.all_reduce(sq)
        if rep is not None:
            sq = sq + rep.float().pow(2).sum()
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        if rep is not None:
            rep.mul_(coef.to(rep.dtype))
        if owned is not None:
            owned.mul_(coef.to(owned.dtype))

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for opt, st in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(st)


def build_optimizers(h, model: nn.Module) -> TrainOptimizers:
    """MuonEq-R + AdamW (OPTIMIZER=muoneq) or plain Muon + Adam (OPTIMIZER=baseline)."""
    if h.optimizer not in ("muoneq", "baseline"):
        raise ValueError(f"OPTIMIZER={h.optimizer!r}: expected muoneq or baseline")
    baseline = h.optimizer == "baseline"
    groups = split_params(model)
    cuda = next(model.parameters()).is_cuda
    adam_kw = dict(betas=(h.beta1, h.beta2), eps=h.adam_eps, fused=True if cuda else None)

    def adam(params: list, lr: float, wd: float) -> torch.optim.Optimizer:
        pg = [{"params": params, "lr": lr, "base_lr": lr}]
        if baseline:
            return torch.optim.Adam(pg, **adam_kw)
        return torch.optim.AdamW(pg, weight_decay=wd, **adam_kw)

    opts: list[torch.optim.Optimizer] = []
    embed_lr = h.tied_embed_lr if h.tie_embeddings else h.embed_lr
    opts.append(adam([p for _, p in groups["embed"]], embed_lr, h.embed_wd))
    if groups["head"]:
        opts.append(torch.optim.Adam([{"params": [p for _, p in groups["head"]], "lr": h.head_lr,
                                       "base_lr": h.head_lr}], **adam_kw))
    muon = None
    if groups["matrix"]:
        muon = Muon([p for _, p in groups["matrix"]], lr=h.matrix_lr, momentum=h.muon_momentum,
                    backend_steps=h.muon_backend_steps, weight_decay=0.0 if baseline else h.muon_wd,
                    row_normalize=h.muon_row_normalize and not baseline, ns=h.muon_ns)
        for g in muon.param_groups:
            g["base_lr"] = h.matrix_lr
        opts.append(muon)
    if groups["scalar"]:
        opts.append(adam([p for _, p in groups["scalar"]], h.scalar_lr, h.adam_wd))
    return TrainOptimizers(opts, muon)


def training_fraction(step: int, iterations: int, elapsed_ms: float, cap_ms: float | None) -> float:
    """Progress through training in [0, 1]: by wallclock against the cap when one is set
    (elapsed / (MAX_WALLCLOCK_SECONDS - GPTQ_RESERVE_SECONDS)), else by steps."""
    if cap_ms is not None and cap_ms > 0:
        return min(elapsed_ms / cap_ms, 1.0)
    return min(step / max(iterations, 1), 1.0)


def lr_scale_at(frac: float, warmdown_frac: float, min_lr: float = 0.0) -> float:
    """1 until the final ``warmdown_frac`` of training, then linear down towards 0, never below
    ``min_lr`` (MIN_LR, a fraction of each base LR)."""
    if warmdown_frac <= 0:
        return 1.0
    start = 1.0 - warmdown_frac
    if frac < start:
        return 1.0
    return max((1.0 - frac) / warmdown_frac, min_lr, 0.0)


def muon_momentum_at(h, step: int) -> float:
    """Muon momentum warmed linearly from MUON_MOMENTUM_WARMUP_START over the first steps."""
    if h.muon_momentum_warmup_steps <= 0:
        return h.muon_momentum
    f = min(step / h.muon_momentum_warmup_steps, 1.0)
    return (1 - f) * h.muon_momentum_warmup_start + f * h.muon_momentum
