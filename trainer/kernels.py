"""Fused kernels of the 1.0611 stack, with the eager definitions they must match.

``softcapped_cross_entropy``: mean cross-entropy of ``softcap * tanh(logits / softcap)`` (one pass
over the logits on CUDA instead of materialising the capped copy). ``linear_leaky_relu2``:
``leaky_relu(x @ W.T, 0.5) ** 2`` (the MLP's up-projection and activation in one GEMM epilogue).
On CPU, or where the fused kernels are unavailable, the eager definitions run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softcapped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Mean cross-entropy over rows of raw ``logits`` [N, V] after the tanh softcap; targets [N]."""
    capped = softcap * torch.tanh(logits.float() / softcap)
    return F.cross_entropy(capped, targets)


def linear_leaky_relu2(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x @ weight.T, 0.5) ** 2`` for x [..., in], weight [hidden, in]."""
    return F.leaky_relu(F.linear(x, weight.to(x.dtype)), negative_slope=0.5).square()
