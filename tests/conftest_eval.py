"""Shared pieces for the evaluation tests (bpb, evaluate, ttt, probes): a SentencePiece BPE
tokenizer trained on stdlib text with the official tokenizers' settings, validation-style token
streams (documents separated by BOS), and a tiny causal LM that follows the model contract."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import pydoc_data.topics

import pytest
import sentencepiece as spm
import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F

from trainer.config import Hyperparameters
from trainer.dist import DistInfo

# settings of the challenge's fineweb_8192_bpe.model (read from its trainer/normalizer spec)
SP_SETTINGS = dict(model_type="bpe", character_coverage=0.999, byte_fallback=True, split_digits=True,
                   hard_vocab_limit=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                   normalization_rule_name="nmt_nfkc", add_dummy_prefix=False)
VOCAB = 768
DOC_MODULES = ["json", "os", "re", "collections", "functools", "itertools", "pathlib", "argparse",
               "subprocess", "textwrap", "string", "random", "statistics", "fractions", "decimal"]


def stdlib_documents() -> list[str]:
    """Real English text: the pydoc topics, then module docstrings."""
    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    for name in DOC_MODULES:
        doc = importlib.import_module(name).__doc__
        if doc:
            docs.append(doc)
    return docs


@functools.cache
def sp_model_proto() -> bytes:
    lines = [ln.strip() for d in stdlib_documents() for ln in d.split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB,
                                   minloglevel=2, num_threads=1, **SP_SETTINGS)
    return buf.getvalue()


def make_sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=sp_model_proto())


def val_stream(sp, docs: list[str]) -> list[int]:
    """The challenge's validation layout: each document is BOS followed by its tokens."""
    out: list[int] = []
    for d in docs:
        out.append(sp.bos_id())
        out.extend(sp.encode(d))
    return out


@functools.cache
def real_val_tokens(n: int) -> torch.Tensor:
    """The first ``n`` tokens of a BOS-separated stream of stdlib documents (int64)."""
    sp = make_sp()
    docs = stdlib_documents()
    # interleave short docstrings and long topics so document boundaries occur often
    order = docs[-len(DOC_MODULES):] + docs[:-len(DOC_MODULES)]
    ids = val_stream(sp, order)
    assert len(ids) >= n, (len(ids), n)
    return torch.tensor(ids[:n], dtype=torch.int64)


def cpu_dist() -> DistInfo:
    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init: str):
    """A gloo process group for a spawned test worker. On success every rank meets at a barrier
    before the group is torn down: a rank that destroyed it while a peer still used it aborted
    that peer (SIGABRT, "terminate called without an active exception") on a busy CI machine."""
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        yield DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def eval_hparams(**over) -> Hyperparameters:
    h = Hyperparameters.from_env({"PRESET": "tiny"})
    base = dict(vocab_size=VOCAB, eval_seq_len=32, eval_stride=8, eval_batch_seqs=4, ttt_chunk_tokens=128,
                ttt_epochs=2, ttt_batch_seqs=2, ttt_lr=0.05, ttt_momentum=0.9, ttt_grad_clip=1.0)
    base.update(over)
    for k, v in base.items():
        setattr(h, k, v)
    return h


class TinyCausalLM(nn.Module):
    """Stand-in following the model contract: ``model(x)`` -> fp32 logits [B, T, V];
    ``model(x, y)`` -> mean cross-entropy. One causal attention layer with absolute positions
    (so a token's score depends on where its window starts) and an MLP."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, heads: int = 2, max_len: int = 256,
                 seed: int = 0, causal: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.heads, self.causal = heads, causal
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + self.out(F.gelu(self.fc(x)))
        logits = self.head(x).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def naive_nll(model: nn.Module, tokens: torch.Tensor, ctx_start) -> tuple[float, list[float]]:
    """Reference: score each target k alone, running the model on tokens[ctx_start(k):k]."""
    per = []
    with torch.no_grad():
        for k in range(1, tokens.numel()):
            c = ctx_start(k)
            logp = torch.log_softmax(model(tokens[None, c:k])[0, -1].double(), -1)
            per.append(-float(logp[tokens[k]]))
    return sum(per), per


@functools.cache
def paragraph_val_tokens(n_docs: int, join: int = 1) -> torch.Tensor:
    """A validation-style stream of ``n_docs`` documents of varied lengths (about 5 to 800 tokens):
    paragraphs of the stdlib text, ``join`` consecutive paragraphs per document."""
    sp = make_sp()
    paras = [p.strip() for d in stdlib_documents() for p in d.split("\n\n") if p.strip()]
    docs = ["\n\n".join(paras[i:i + join]) for i in range(0, join * n_docs, join)]
    return torch.tensor(val_stream(sp, docs), dtype=torch.int64)


def lora_hparams(**over) -> Hyperparameters:
    """Tiny phased LoRA TTT settings: 64-token windows, 16-token chunks, 4 documents per batch."""
    base = dict(ttt_mode="lora_phased", eval_seq_len=64, ttt_lora_rank=4, ttt_lora_alpha=8.0,
                ttt_lora_lr=0.01, ttt_lora_chunk_tokens=16, ttt_lora_batch_docs=4, ttt_weight_decay=0.5,
                ttt_beta1=0.0, ttt_beta2=0.99, phased_ttt_prefix_docs=8, phased_ttt_phases=2,
                global_ttt_lr=0.01, global_ttt_momentum=0.9, global_ttt_epochs=1, global_ttt_chunk_tokens=192,
                global_ttt_batch_seqs=2, global_ttt_grad_clip=1.0, eval_budget_seconds=0.0)
    base.update(over)
    return eval_hparams(**base)


def tiny_gpt(seed: int = 0, recurrence: bool = True) -> nn.Module:
    """The real model (trainer/model.py) at the tiny preset's size, fp32, vocab VOCAB."""
    from trainer.attention import select_attention_backend
    from trainer.model import GPT

    select_attention_backend(torch.device("cpu"))
    h = eval_hparams(eval_seq_len=64)
    torch.manual_seed(seed)
    gpt = GPT(h).float()
    gpt.set_recurrence(recurrence)
    # zero-initialised output projections would hide the adapters' effect on q/k/v/o: give them weight
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0.0, 0.02)
    return gpt.eval()


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a shared 2-core machine, two threads contend and tiny models run
    up to 100x slower (import this fixture into a test module to use it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
