"""The batched per-document LoRA adapters (trainer/ttt_lora.py) on the real tiny GPT: each row's
delta is its own adapter's, a looped layer gets one adapter per pass, AdamW is torch's, a reset
gives back the unadapted model, and a bypassed module is reported."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest_eval import (
    VOCAB,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_gpt,
)

from trainer.ttt_lora import DocLoraBank, lora_layer_slots, lora_token_nll

CPU = torch.device("cpu")


def make_bank(model, rows=3, rank=4, alpha=8.0, lr=0.01, betas=(0.0, 0.99), wd=0.5) -> DocLoraBank:
    for p in model.parameters():
        p.requires_grad_(False)
    return DocLoraBank(model, rows, rank, alpha, 0, CPU, lr, betas, wd)


def ab(bank: DocLoraBank, site: str, slot: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    oa, ob, din, dout = bank.layout[(site, slot)]
    r = bank.rank
    return (bank.flat[row, oa:oa + r * din].view(r, din), bank.flat[row, ob:ob + dout * r].view(dout, r))


class PlusLora(nn.Module):
    """A module followed by a fixed low-rank term of its input (the adapter written out)."""

    def __init__(self, inner: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.inner, self.a, self.b, self.scale = inner, a.clone(), b.clone(), scale

    def forward(self, x, *args):
        return self.inner(x, *args) + self.scale * (x @ self.a.T) @ self.b.T


def test_each_row_gets_its_own_adapters():
    gpt = tiny_gpt(recurrence=False)
    plain = copy.deepcopy(gpt)
    bank = make_bank(gpt)
    torch.manual_seed(1)
    with torch.no_grad():
        bank.flat.normal_(0.0, 0.05)
    x = torch.randint(2, VOCAB, (3, 24))
    bank.weights(3)
    out = gpt(x)
    bank.check_calls()
    bank.end_forward()
    base = plain(x)
    for row in range(3):
        ref = copy.deepcopy(plain)
        with torch.no_grad():
            for i, blk in enumerate(ref.blocks):
                for site, lin in (("q", blk.attn.c_q), ("k", blk.attn.c_k), ("v", blk.attn.c_v)):
                    a, b = ab(bank, site, i, row)
                    lin.weight += bank.scale * b @ a  # a linear adapter merges into the weight
                blk.attn = PlusLora(blk.attn, *ab(bank, "o", i, row), bank.scale)
                blk.mlp = PlusLora(blk.mlp, *ab(bank, "mlp", i, row), bank.scale)
            ref.lm_head = PlusLora(ref.lm_head, *ab(bank, "head", 0, row), bank.scale)
        want = ref(x[row:row + 1])[0]
        torch.testing.assert_close(out[row], want, rtol=1e-4, atol=1e-4)
        assert (out[row] - base[row]).abs().max() > 1e-2  # the adapters did change the logits


def test_a_looped_layer_gets_one_adapter_per_pass():
    gpt = tiny_gpt(recurrence=True)
    slots = lora_layer_slots(gpt)
    seq = gpt.encoder_indices + gpt.decoder_indices
    assert sorted(s for i in range(len(gpt.blocks)) for s in slots[i]) == list(range(len(seq)))
    assert all(seq[s] == i for i in slots for s in slots[i]) and max(len(s) for s in slots.values()) > 1
    bank = make_bank(gpt, rows=1)
    calls: list[float] = []

    def watch(mod, args, out):  # runs after the bank's hook: the delta the bank added
        calls.append(float((out - F.linear(args[0], mod.weight)).detach().abs().max()))

    for blk in gpt.blocks:
        blk.attn.c_q.register_forward_hook(watch)
    x = torch.randint(2, VOCAB, (1, 16))
    for target in (1, 3, 5, len(seq) - 1):
        with torch.no_grad():
            bank.reset()
            _, b = ab(bank, "q", target, 0)
            b.normal_(0.0, 0.1)
        calls.clear()
        bank.weights(1)
        gpt(x)
        bank.check_calls()
        bank.end_forward()
        assert len(calls) == len(seq)
        assert [i for i, d in enumerate(calls) if d > 0] == [target]  # only in that virtual layer


@pytest.mark.parametrize("betas", [(0.0, 0.99), (0.9, 0.999)])
def test_adamw_matches_torch(betas):
    gpt = tiny_gpt(recurrence=False)
    bank = make_bank(gpt, rows=3, lr=0.02, betas=betas, wd=0.5)
    torch.manual_seed(2)
    with torch.no_grad():
        bank.flat.normal_()
    start = bank.flat.clone()
    ref = nn.Parameter(start[:2].clone())
    opt = torch.optim.AdamW([ref], lr=0.02, betas=betas, eps=1e-10, weight_decay=0.5)
    coef = torch.randn_like(start)
    for step in range(1, 4):
        w = bank.weights(3)
        (coef * w.square() * step).sum().backward()
        bank.adam_step(2, step)
        opt.zero_grad()
        (coef[:2] * ref.square() * step).sum().backward()
        opt.step()
    bank.end_forward()
    torch.testing.assert_close(bank.flat[:2], ref.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(bank.flat[2], start[2])  # a row that did not train is untouched


def test_reset_gives_back_the_unadapted_model():
    gpt = tiny_gpt(recurrence=True)
    x = torch.randint(2, VOCAB, (2, 20))
    y = torch.randint(2, VOCAB, (2, 20))
    with torch.no_grad():
        base = lora_token_nll(gpt, x, y)
    bank = make_bank(gpt, rows=2, lr=0.05)
    fresh = bank.flat.clone()
    assert torch.equal(bank.flat[0, :bank.a_size], bank.flat[1, :bank.a_size])  # every row starts alike
    assert not bank.flat[:, bank.a_size:].any()  # B = 0: a fresh adapter is a no-op ...
    bank.weights(2)
    nll = lora_token_nll(gpt, x, y)
    bank.end_forward()
    torch.testing.assert_close(nll, base, rtol=0, atol=0)  # ... exactly
    for step in range(1, 4):
        nll[:, :8].mean(-1).sum().backward()
        bank.adam_step(2, step)
        bank.weights(2)
        nll = lora_token_nll(gpt, x, y)
        bank.end_forward()
    assert (nll - base).abs().max() > 1e-3
    bank.reset()
    assert torch.equal(bank.flat, fresh) and not bank.exp_avg_sq.any()
    bank.weights(2)
    after = lora_token_nll(gpt, x, y)
    bank.end_forward()
    torch.testing.assert_close(after, base, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(lora_token_nll(gpt, x, y), base, rtol=0, atol=0)  # hooks inert outside


def test_a_bypassed_module_is_reported():
    gpt = tiny_gpt(recurrence=False)
    bank = make_bank(gpt, rows=1)
    bank._handles.pop(4).remove()  # as if blocks.0.mlp ran through a kernel, not as a module
    bank.weights(1)
    gpt(torch.randint(2, VOCAB, (1, 8)))
    with pytest.raises(RuntimeError, match=r"blocks\.0 \(mlp\) ran 0 times"):
        bank.check_calls()
    bank.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.compile of the hooked model)")
def test_compiled_hooked_forward_matches_eager_on_cuda():
    dev = torch.device("cuda")
    gpt = tiny_gpt(recurrence=True).to(dev)
    for p in gpt.parameters():
        p.requires_grad_(False)
    bank = DocLoraBank(gpt, 4, 8, 16.0, 0, dev, 1e-3, (0.0, 0.99), 0.5)
    with torch.no_grad():
        bank.flat[:, bank.a_size:].normal_(0.0, 0.05)
    fn = torch.compile(lora_token_nll, dynamic=True, fullgraph=True)
    for n, t in ((4, 16), (3, 40), (2, 64)):
        x = torch.randint(2, VOCAB, (n, t), device=dev)
        y = torch.randint(2, VOCAB, (n, t), device=dev)
        w = bank.weights(n)
        got = fn(gpt, x, y)
        bank.check_calls()
        got[:, :8].sum().backward()
        g1 = w.grad.clone()
        w2 = bank.weights(n)
        want = lora_token_nll(gpt, x, y)
        want[:, :8].sum().backward()
        bank.end_forward()
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(g1, w2.grad, rtol=2e-2, atol=1e-4)
