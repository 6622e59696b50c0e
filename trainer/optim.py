"""Optimizers and schedules: MuonEq-R for the block matrices, AdamW for embeddings and scalars.

MuonEq-R is Muon (Nesterov momentum, then the update replaced by an approximately orthogonal
matrix from 5 Newton-Schulz steps, bf16 on GPU) with each row of the update normalised first.
The ``baseline`` optimizer is the naive script's: plain Muon (no row normalisation, no weight
decay) and Adam. Same-shape matrices are orthogonalised together as one batch; in distributed
runs each rank takes a share of every batch and the results are summed across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn as nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton-Schulz coefficients (Keller Jordan's Muon)


def newton_schulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of each matrix in ``g`` ([..., m, n]); bf16 on CUDA."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon / MuonEq-R over 2-D parameters (one param group)."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, row_normalize: bool = False):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                            nesterov=nesterov, weight_decay=weight_decay,
                                            row_normalize=row_normalize))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")

    @staticmethod
    def _buckets(params: list[torch.Tensor]) -> list[list[int]]:
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        return [by_shape[k] for k in sorted(by_shape)]

    @torch.no_grad()
    def step(self, closure=None):
        distributed = tdist.is_available() and tdist.is_initialized()
        world = tdist.get_world_size() if distributed else 1
        rank = tdist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(st["momentum_buffer"])
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
            upd = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
            new: list[torch.Tensor | None] = [None] * len(params)
            for idx in self._buckets(params):
                mine = idx[rank::world]
                rows, cols = params[idx[0]].shape
                out = None
                if mine:
                    G = torch.stack([upd[i] for i in mine])
                    if group["row_normalize"]:  # MuonEq-R: equalise the rows before orthogonalising
                        G = G / G.norm(dim=-1, keepdim=True).clamp_min(1e-7)
                    out = newton_schulz5(G, group["backend_steps"])
                    out = out * max(1.0, rows / cols) ** 0.5
                if world > 1:  # each matrix was done by one rank: summing gathers them all
                    full = torch.zeros((len(idx), rows, cols), dtype=out.dtype if out is not None else (
                        torch.bfloat16 if params[0].is_cuda else torch.float32), device=params[0].device)
                    if out is not None:
                        full[rank::world] = out
                    tdist.all_reduce(full)
                    out = full
                    mine = idx
                for j, i in enumerate(mine):
                    new[i] = out[j]
            if wd > 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, [u.to(p.dtype) for u, p in zip(new, params)], alpha=-lr)
        return None


# names of parameters that are never Muon matrices even when 2-D
_SCALAR_NAME_PARTS = ("resid_mix", "skip_weights", "skip_gates", "attn_gate", "smear", "q_gain",
                      "attn_scale", "mlp_scale", "scale")


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
    """The trainer's optimizers as one: zero_grad, step, LR scale, Muon momentum, state."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], muon: Muon | None):
        self.optimizers = optimizers
        self.muon = muon

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
                    row_normalize=h.muon_row_normalize and not baseline)
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


def lr_scale_at(frac: float, warmdown_frac: float) -> float:
    """1 until the final ``warmdown_frac`` of training, then linear down to 0."""
    if warmdown_frac <= 0:
        return 1.0
    start = 1.0 - warmdown_frac
    if frac < start:
        return 1.0
    return max((1.0 - frac) / warmdown_frac, 0.0)


def muon_momentum_at(h, step: int) -> float:
    """Muon momentum warmed linearly from MUON_MOMENTUM_WARMUP_START over the first steps."""
    if h.muon_momentum_warmup_steps <= 0:
        return h.muon_momentum
    f = min(step / h.muon_momentum_warmup_steps, 1.0)
    return (1 - f) * h.muon_momentum_warmup_start + f * h.muon_momentum
