"""Shared pieces for the evaluation tests (bpb, evaluate, ttt, probes): a SentencePiece BPE
tokenizer trained on stdlib text with the official tokenizers' settings, validation-style token
streams (documents separated by BOS), and a tiny causal LM that follows the model contract."""

from __future__ import annotations

import functools
import importlib
import io
import pydoc_data.topics

import sentencepiece as spm
import torch
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
