"""Bytes per token, for val_bpb: how many UTF-8 bytes of text each scored token stands for.

The challenge's convention (its ``build_sentencepiece_luts``): a normal piece counts the UTF-8
length of its text, where the leading-space marker U+2581 counts one byte unless the previous
token is a boundary (document start: BOS, any control/unknown/unused piece), because the
decoder drops a document's leading space; a byte-fallback piece ``<0xNN>`` counts one byte;
control, unknown and unused pieces count zero. Summed over a document this equals the UTF-8
length of ``sp.decode`` of that document (tests/test_bpb.py checks it on real text).

CaseOps tokenizers (``lossless_caps_caseops_v1``, pgolf/caseops.py) hold the four operator
characters below as single-character pieces. The original text has none of them: an operator piece
counts zero bytes, except right after an odd run of ESC pieces, where it is a literal character
of the original text and counts its UTF-8 bytes. Summed over a document this equals the UTF-8
length of the inverse transform of ``sp.decode`` (tests/test_caseops_bpb.py). The evaluators take
per-position bytes (``val_bytes``): a data-side sidecar ``fineweb_val_bytes_NNNNNN.bin`` when the
data folder has one (the record's layout), else these tables (``build_val_bytes``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from trainer.data import VAL_BYTES_PREFIX, ShardError, load_shard, read_shard_header, validation_shard_paths

_BC_SPACE_MARK = "\u2581"
CASEOPS_TITLE = "\ue001"  # the next ASCII word starts with a capital
CASEOPS_ALLCAPS = "\ue002"  # the next ASCII word is all capitals
CASEOPS_CAPNEXT = "\ue003"  # the next ASCII letter is a capital
CASEOPS_ESC = "\ue004"  # the next character is literal (an operator character of the original text)
CASEOPS_OPERATORS = (CASEOPS_TITLE, CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC)


def caseops_operator_ids(sp) -> list[int] | None:
    """Ids of the four CaseOps operator pieces (TITLE, ALLCAPS, CAPNEXT, ESC), or None when the
    tokenizer lacks any of them (not a CaseOps tokenizer)."""
    ids = [int(sp.piece_to_id(c)) for c in CASEOPS_OPERATORS]
    if all(sp.id_to_piece(i) == c for i, c in zip(ids, CASEOPS_OPERATORS)):
        return ids
    return None


class ByteCounter:
    """Lookup tables from a ``sentencepiece.SentencePieceProcessor``; ids past the tokenizer's
    vocabulary (a model vocabulary padded up to ``vocab_size``) count as zero-byte boundaries.

    For a CaseOps tokenizer the operator pieces count zero in ``base_bytes`` (so ``token_bytes``
    is exact except for an escaped operator, which ``position_bytes`` adds back)."""

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
        literal = np.zeros(size, dtype=np.int32)
        ops = caseops_operator_ids(sp)
        self.caseops = ops is not None
        self.esc_id = ops[3] if ops else -1
        for i in ops or []:
            literal[i] = base[i]  # what an escaped operator counts: its own UTF-8 bytes
            base[i] = 0
        self.vocab_size = size
        self.bos_id = int(sp.bos_id())
        self.literal_bytes = torch.from_numpy(literal)
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
        return first + int(position_bytes(self, t).sum())


def position_bytes(counter: ByteCounter, tokens: torch.Tensor) -> torch.Tensor:
    """Bytes credited to each position of a token stream as a prediction target, int32 on the
    tokens' device: ``out[k]`` = bytes of ``tokens[k]`` given ``tokens[k-1]``; ``out[0] = 0`` (the
    first token is never a target). The evaluators take this per-position array (``val_bytes``),
    so bytes can also come from a data-side sidecar (CaseOps) instead of the tokenizer."""
    t = tokens.reshape(-1)
    out = torch.zeros(t.numel(), dtype=torch.int32, device=t.device)
    if t.numel() > 1:
        out[1:] = counter.token_bytes(t[:-1], t[1:])
        if counter.esc_id >= 0:  # CaseOps: an operator right after an odd run of ESC is a literal
            t = t.long()
            literal = counter.literal_bytes.to(t.device)[t]
            out += torch.where(_bc_after_odd_esc_run(t, counter.esc_id), literal, 0).to(torch.int32)
    return out


def _bc_after_odd_esc_run(t: torch.Tensor, esc_id: int) -> torch.Tensor:
    """Whether each position directly follows an odd number of consecutive ESC tokens."""
    idx = torch.arange(t.numel(), device=t.device)
    last_other = torch.cummax(torch.where(t == esc_id, -1, idx), 0).values
    run = idx - last_other  # ESC tokens ending at each position
    out = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
    out[1:] = run[:-1] % 2 == 1
    return out


def val_byte_sidecar_path(token_shard: str) -> str:
    """``fineweb_val_NNNNNN.bin`` -> ``fineweb_val_bytes_NNNNNN.bin`` beside it."""
    d, name = os.path.split(token_shard)
    return os.path.join(d, VAL_BYTES_PREFIX + name.removeprefix("fineweb_val_"))


def load_val_byte_sidecar(val_pattern: str, n_tokens: int) -> torch.Tensor:
    """The byte sidecar of the validation shards as int32 ``[n_tokens]`` (the first ``n_tokens``
    positions, as the tokens were cut by VAL_MAX_TOKENS). Each sidecar shard must hold exactly as
    many entries as its token shard; a missing or mismatched one is a one-line ShardError."""
    parts, have = [], 0
    for shard in validation_shard_paths(val_pattern):
        side = val_byte_sidecar_path(shard)
        if not os.path.isfile(side):
            raise ShardError(f"{side}: missing: every validation shard needs its byte sidecar "
                             f"(the folder has some fineweb_val_bytes_*.bin files)")
        n_side, n_tok = read_shard_header(side), read_shard_header(shard)
        if n_side != n_tok:
            raise ShardError(f"{side}: {n_side} byte counts but {os.path.basename(shard)} holds "
                             f"{n_tok} tokens")
        if have < n_tokens:
            parts.append(load_shard(side))
            have += n_side
    if have < n_tokens:
        raise ShardError(f"{val_pattern}: byte sidecars cover {have} positions, the tokens {n_tokens}")
    return torch.from_numpy(np.concatenate(parts)[:n_tokens].astype(np.int32))


def build_val_bytes(h, sp, val_tokens: torch.Tensor, val_pattern: str) -> torch.Tensor:
    """``val_bytes`` for the evaluators: the data folder's byte sidecar when it has
    ``fineweb_val_bytes_*.bin``, else the tokenizer's tables. A CaseOps tokenizer without a sidecar
    is refused (its data is expected in the record's layout, sidecar included)."""
    folder = os.path.dirname(val_pattern)
    has_sidecar = any(n.startswith(VAL_BYTES_PREFIX) and n.endswith(".bin") for n in _bc_listdir(folder))
    h.extra["val_bytes_source"] = "sidecar" if has_sidecar else "tokenizer"
    if has_sidecar:
        return load_val_byte_sidecar(val_pattern, val_tokens.numel())
    counter = ByteCounter(sp, h.vocab_size)
    if counter.caseops:
        raise ValueError(f"{h.tokenizer_path}: a CaseOps tokenizer, but {folder or '.'} has no byte sidecar "
                         f"{VAL_BYTES_PREFIX}*.bin (make the data with `python -m pgolf data ... --caseops` "
                         f"or `--variant sp8192_caseops`)")
    return position_bytes(counter, val_tokens)


def _bc_listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder or ".")
    except OSError:
        return []


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
