"""Bytes per token, for val_bpb: how many UTF-8 bytes of text each scored token stands for.

The challenge's convention (its ``build_sentencepiece_luts``): a normal piece counts the UTF-8
length of its text, where the leading-space marker U+2581 counts one byte unless the previous
token is a boundary (document start: BOS, any control/unknown/unused piece), because the
decoder drops a document's leading space; a byte-fallback piece ``<0xNN>`` counts one byte;
control, unknown and unused pieces count zero. Summed over a document this equals the UTF-8
length of ``sp.decode`` of that document (tests/test_bpb.py checks it on real text).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_BC_SPACE_MARK = "\u2581"


class ByteCounter:
    """Lookup tables from a ``sentencepiece.SentencePieceProcessor``; ids past the tokenizer's
    vocabulary (a model vocabulary padded up to ``vocab_size``) count as zero-byte boundaries."""

    def __init__(self, sp, vocab_size: int):
        n_sp = int(sp.vocab_size())
        size = max(n_sp, int(vocab_size))
        base = np.zeros(size, dtype=np.int32)
        space = np.zeros(size, dtype=np.bool_)
        boundary = np.ones(size, dtype=np.bool_)
        for i in range(n_sp):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(_BC_SPACE_MARK):
                space[i] = True
                piece = piece[1:]
            # a marker inside a piece is a plain space once decoded (none in the official tokenizers)
            base[i] = len(piece.replace(_BC_SPACE_MARK, " ").encode("utf-8"))
        self.vocab_size = size
        self.bos_id = int(sp.bos_id())
        self.base_bytes = torch.from_numpy(base)
        self.has_space = torch.from_numpy(space)
        self.is_boundary = torch.from_numpy(boundary)
        self._bc_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self._bc_tables.get(device)
        if t is None:
            t = (self.base_bytes.to(device), self.has_space.to(device), self.is_boundary.to(device))
            self._bc_tables[device] = t
        return t

    def token_bytes(self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Bytes of each target token given its predecessor (same shapes), int32 on tgt's device."""
        base, space, boundary = self._tables(tgt_ids.device)
        prev_ids = prev_ids.to(tgt_ids.device).long()
        tgt_ids = tgt_ids.long()
        return base[tgt_ids] + (space[tgt_ids] & ~boundary[prev_ids]).to(torch.int32)

    def stream_bytes(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> int:
        """Bytes of a whole token stream; its first token counts as following a boundary."""
        t = torch.from_numpy(_bc_as_ids(ids))
        if t.numel() == 0:
            return 0
        if int(t.min()) < 0 or int(t.max()) >= self.vocab_size:
            raise ValueError(f"token ids outside [0, {self.vocab_size}): "
                             f"min {int(t.min())} max {int(t.max())}")
        first = int(self.base_bytes[t[0]])  # after a boundary: its leading space is not counted
        return first + int(self.token_bytes(t[:-1], t[1:]).sum())


def position_bytes(counter: ByteCounter, tokens: torch.Tensor) -> torch.Tensor:
    """Bytes credited to each position of a token stream as a prediction target, int32 on the
    tokens' device: ``out[k]`` = bytes of ``tokens[k]`` given ``tokens[k-1]``; ``out[0] = 0`` (the
    first token is never a target). The evaluators take this per-position array (``val_bytes``),
    so bytes can also come from a data-side sidecar (CaseOps) instead of the tokenizer."""
    t = tokens.reshape(-1)
    out = torch.zeros(t.numel(), dtype=torch.int32, device=t.device)
    if t.numel() > 1:
        out[1:] = counter.token_bytes(t[:-1], t[1:])
    return out


def _bc_as_ids(ids: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().reshape(-1).numpy().astype(np.int64)
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def decoded_text_bytes(sp, ids: Sequence[int] | torch.Tensor | np.ndarray) -> int:
    """Ground truth: UTF-8 bytes of the text, decoding each boundary-separated document alone.

    The stream is cut at control/unknown/unused tokens (BOS between documents) and at ids
    outside the tokenizer; each document is decoded with ``sp.decode`` and the UTF-8 lengths
    are summed.
    """
    flat = _bc_as_ids(ids)
    n_sp = int(sp.vocab_size())
    cut = np.ones(n_sp, dtype=np.bool_)
    for i in range(n_sp):
        cut[i] = bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    inside = (flat >= 0) & (flat < n_sp)
    is_cut = np.ones(flat.shape, dtype=np.bool_)
    is_cut[inside] = cut[flat[inside]]
    total = 0
    for doc in np.split(flat, np.flatnonzero(is_cut)):
        doc = doc[1:] if doc.size and (doc[0] < 0 or doc[0] >= n_sp or cut[doc[0]]) else doc
        if doc.size:
            total += len(sp.decode(doc.tolist()).encode("utf-8"))
    return total
