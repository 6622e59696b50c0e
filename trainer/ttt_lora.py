"""Batched per-document LoRA adapters for test-time training, attached through forward hooks.

Row ``b`` of a batch (one document's window) gets its own rank-r adapters, on every virtual layer
(a looped layer gets one adapter per pass, as the record's slots do):
- q, k, v: on ``blocks[i].attn.c_q / .c_k / .c_v``, delta ``(x @ A_b.T) @ B_b.T`` added to the output;
- o: on ``blocks[i].attn``: delta from the attention's input, added to its output (after ``proj``);
- mlp: on ``blocks[i].mlp``: delta from the MLP's input, added to its output;
- head: on ``lm_head``: delta from the final hidden states, added to the logits before the softcap.
Init and scaling follow the record: A ~ U(+-1/sqrt(in)), B = 0 (a fresh adapter changes nothing),
output scaled by TTT_LORA_ALPHA / rank. Every document starts from the same A (drawn once from
SEED) and B = 0, with a fresh optimizer state: nothing carries over from one document to the next.

All adapters of a row live in one flat fp32 row ``[P]`` (every A first, then every B), so a batch
is one ``[rows, P]`` tensor, a reset is two copies and AdamW is a few element-wise ops on it.
The model (trainer/model.py) is not edited: hooks read the adapters of the current forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_SITES = ("q", "k", "v", "o", "mlp")


def _lora_io(mod: nn.Module) -> tuple[int, int]:
    return int(mod.in_features), int(mod.out_features)


def lora_layer_slots(model: nn.Module) -> dict[int, list[int]]:
    """Physical block -> its virtual-layer slots, in call order (a looped block has several)."""
    enc = list(getattr(model, "encoder_indices", range(len(model.blocks))))
    dec = list(getattr(model, "decoder_indices", []))
    slots: dict[int, list[int]] = {i: [] for i in range(len(model.blocks))}
    for s, i in enumerate(enc + dec):
        slots[i].append(s)
    return slots


class DocLoraBank:
    """Adapters for up to ``rows`` documents at once, their AdamW state, and the model hooks.

    Use: ``reset()`` per batch of documents; per forward ``weights(n)`` (a fresh leaf over rows
    ``[:n]``; the hooks are live until ``end_forward()``), run the model, ``check_calls()``,
    ``end_forward()``; after ``backward``, ``adam_step(n_train, step)`` updates rows ``[:n_train]``.
    Outside a forward the hooks do nothing (the model runs as it was); ``close()`` removes them.
    """

    def __init__(self, model: nn.Module, rows: int, rank: int, alpha: float, seed: int,
                 device: torch.device, lr: float, betas: tuple[float, float], weight_decay: float,
                 eps: float = 1e-10):
        if rank < 1 or rows < 1:
            raise ValueError(f"TTT_LORA_RANK={rank}, TTT_LORA_BATCH_DOCS={rows}: both must be >= 1")
        self.rows, self.rank, self.scale = rows, rank, alpha / rank
        self.lr, self.betas, self.wd, self.eps = lr, betas, weight_decay, eps
        self.slots = lora_layer_slots(model)
        n_slots = sum(len(s) for s in self.slots.values())
        dim = model.blocks[0].attn.c_q.in_features
        head = model.lm_head
        head_io = _lora_io(head) if hasattr(head, "in_features") else \
            (model.tok_emb.embedding_dim, model.tok_emb.num_embeddings)
        # (site, slot) -> (offset of A, offset of B, in, out); A block first, then B block
        io = {}
        for i, blk in enumerate(model.blocks):
            for s in self.slots[i]:
                io[("q", s)] = _lora_io(blk.attn.c_q)
                io[("k", s)] = _lora_io(blk.attn.c_k)
                io[("v", s)] = _lora_io(blk.attn.c_v)
                io[("o", s)] = (dim, blk.attn.proj.out_features)
                io[("mlp", s)] = (dim, blk.mlp.proj.out_features)
        io[("head", 0)] = head_io
        self.layout: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        off = 0
        for key, (din, _) in io.items():
            self.layout[key] = (off, 0, *io[key])
            off += rank * din
        self.a_size = off
        for key, (oa, _, din, dout) in self.layout.items():
            self.layout[key] = (oa, off, din, dout)
            off += rank * dout
        self.size = off
        gen = torch.Generator().manual_seed(seed)
        a = torch.empty(self.a_size)
        for oa, _, din, _ in self.layout.values():
            bound = 1.0 / math.sqrt(din)
            a[oa:oa + rank * din].uniform_(-bound, bound, generator=gen)
        self.a_init = a.to(device)
        self.flat = torch.zeros(rows, self.size, device=device)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat) if betas[0] > 0 else None
        self.n_slots = n_slots
        self._w: torch.Tensor | None = None
        self.live = False
        self._calls: dict[tuple[str, int], int] = {}
        self._expect = {(site, i): len(self.slots[i]) for i in self.slots for site in LORA_SITES}
        self._expect[("head", 0)] = 1
        self._handles = []
        for i, blk in enumerate(model.blocks):
            for site, mod in (("q", blk.attn.c_q), ("k", blk.attn.c_k), ("v", blk.attn.c_v),
                              ("o", blk.attn), ("mlp", blk.mlp)):
                self._handles.append(mod.register_forward_hook(self._make_hook(site, i)))
        self._handles.append(head.register_forward_hook(self._make_hook("head", 0)))
        self.reset()

    # --- state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Fresh adapters (A from the seed, B = 0) and optimizer state for every row."""
        with torch.no_grad():
            self.flat[:, :self.a_size].copy_(self.a_init.expand(self.rows, -1))
            self.flat[:, self.a_size:].zero_()
            self.exp_avg_sq.zero_()
            if self.exp_avg is not None:
                self.exp_avg.zero_()

    def weights(self, n: int) -> torch.Tensor:
        """A leaf over rows ``[:n]`` (sharing storage with the bank) that this forward's hooks use."""
        self._w = self.flat[:n].detach().requires_grad_(True)
        self._calls.clear()  # in place: the compiled graph guards on this dict
        self.live = True
        return self._w

    def end_forward(self) -> None:
        self.live = False

    def detach(self) -> None:
        self._w = None
        self.live = False
        self._calls.clear()

    def close(self) -> None:
        self.detach()
        for hd in self._handles:
            hd.remove()
        self._handles = []

    def check_calls(self) -> None:
        """Every hooked module ran once per virtual layer in the last forward (else the model
        bypassed a module, e.g. through a fused kernel, and its adapter would silently be missing)."""
        for (site, i), want in self._expect.items():
            got = self._calls.get((site, i), 0)
            if got != want:
                where = "lm_head" if site == "head" else f"blocks.{i} ({site})"
                raise RuntimeError(f"LoRA TTT: the hook on {where} ran {got} times in a forward, expected "
                                   f"{want}: the model must call that submodule as a module")

    # --- hooks ------------------------------------------------------------------------
    def _make_hook(self, site: str, block: int):
        def hook(mod, args, out):
            if not self.live:
                return None
            key = (site, block)
            c = self._calls.get(key, 0)
            self._calls[key] = c + 1
            slot = 0 if site == "head" else self.slots[block][c]
            return out + self._delta(site, slot, args[0]).to(out.dtype)
        return hook

    def _delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor:
        oa, ob, din, dout = self.layout[(site, slot)]
        w, r = self._w, self.rank
        n = w.shape[0]
        a = w[:, oa:oa + r * din].view(n, r, din).to(x.dtype)
        b = w[:, ob:ob + dout * r].view(n, dout, r).to(x.dtype)
        h = torch.bmm(x.reshape(n, -1, din), a.transpose(1, 2))
        return (torch.bmm(h, b.transpose(1, 2)) * self.scale).view(*x.shape[:-1], dout)

    # --- optimizer --------------------------------------------------------------------
    @torch.no_grad()
    def adam_step(self, n_train: int, step: int, lr: float | None = None) -> None:
        """AdamW (decoupled weight decay, bias correction at ``step`` >= 1, as torch.optim.AdamW)
        on rows ``[:n_train]`` with the gradient of the last ``weights()`` leaf."""
        if n_train <= 0 or self._w is None or self._w.grad is None:
            return
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        p, g, v = self.flat[:n_train], self._w.grad[:n_train], self.exp_avg_sq[:n_train]
        p.mul_(1.0 - lr * self.wd)
        if self.exp_avg is not None:
            m = self.exp_avg[:n_train]
            m.mul_(b1).add_(g, alpha=1.0 - b1)
        else:
            m = g
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (v.sqrt() / math.sqrt(1.0 - b2 ** step)).add_(self.eps)
        p.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** step))


def lora_token_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [n, T] of targets ``y`` under the (hooked) model's full softmax."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                           reduction="none").view(y.shape)
