"""Model FLOPs per training token, counted from the hyperparameters (for MFU in the benchmarks).

Matmuls: 6 FLOPs per weight per token (forward 2, backward 4) for every block matrix, counted
once per *virtual* layer (depth recurrence re-runs layers), plus the output head. Attention
scores and the weighted sum: 4*T*d per token per layer forward, halved by the causal mask,
times 3 for forward+backward. Embedding lookups and elementwise work are not counted.
"""

from __future__ import annotations

H100_BF16_DENSE_TFLOPS = 989.0  # datasheet, dense bf16, SXM


def virtual_layers(h, recurrence_on: bool) -> int:
    if not recurrence_on or h.num_loops <= 0:
        return h.num_layers
    return h.num_layers + h.num_loops * (h.loop_end - h.loop_start + 1)


def train_flops_per_token(h, recurrence_on: bool = False) -> float:
    d = h.model_dim
    head_dim = d // h.num_heads
    kv = h.num_kv_heads * head_dim
    attn = d * d + 2 * d * kv + d * d  # q, k, v, out
    mlp = 2 * d * int(h.mlp_mult * d)
    per_layer_matmul = 6 * (attn + mlp)
    per_layer_attn = 3 * 2 * h.train_seq_len * d
    head = 6 * d * h.vocab_size
    return virtual_layers(h, recurrence_on) * (per_layer_matmul + per_layer_attn) + head


def mfu(
    h, tokens_per_s: float, recurrence_on: bool = False, peak_tflops: float = H100_BF16_DENSE_TFLOPS
) -> float:
    return train_flops_per_token(h, recurrence_on) * tokens_per_s / (peak_tflops * 1e12)
