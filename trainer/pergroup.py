"""Per-group compression of the quantized weights (``COMPRESSOR=pergroup``, after PR #1855).

The int matrices' values are grouped by role (``tok_emb.weight``, ``attn.c_q.weight`` of every
layer, ``mlp.fc.weight`` of every layer, ...: weights of one role share a distribution) and each
group is written column by column (the transpose of the row-major matrix: values of one input
feature, which share a scale of their own, sit together). The rows of the "hot" roles
(``PERGROUP_SORTED_ROLES``, as the record) are first put in a greedy L1 nearest-neighbour order,
so that neighbouring values in a column come from similar rows; the permutation is stored.
A group's bytes are cut at tensor boundaries into streams of at most ``PERGROUP_STREAM_BYTES``
(streams decompress in parallel; a cut costs ~0.1% of a stream) and each stream is compressed
with ``lrzip -z -L 9 -p 1`` (ZPAQ context mixing; ``-p 1``: the same bytes whatever the CPU count)
when the ``lrzip`` binary is on PATH, else with brotli-11 (measured within ~0.5-1% of ZPAQ on
int6 GPTQ values in this layout). Everything else (scales, permutations, gates, LQER factors,
small tensors) is stored as with ``COMPRESSOR=brotli``. The artifact records each stream's codec;
decoding an lrzip stream without the binary fails with one line naming it.

lrzip runs without a shell, on files in a private temporary directory, with its configuration
files bypassed (``LRZIP=NOCONFIG``); a stream's declared size (in its own header) must equal the
size our header declares before it is decompressed, and the output is checked again after.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from trainer.quant import QTensor

PERGROUP_STREAM_BYTES = 4 << 20
# roles whose rows are similarity-sorted before compression (the record's choice)
PERGROUP_SORTED_ROLES = ("tok_emb.weight", "lm_head.weight", "attn.c_q.weight", "mlp.fc.weight")
LRZIP_ARGS = ("-z", "-L", "9", "-p", "1")  # ZPAQ back end, strongest level, one thread per stream
LRZIP_TIMEOUT_S = 900.0
_LRZIP_MAGIC = b"LRZI"


class CodecError(RuntimeError):
    """An external compressor is missing or failed (the message says which and why)."""


def weight_role(name: str) -> str:
    """``blocks.3.mlp.fc.weight`` -> ``mlp.fc.weight``; names outside the blocks are their own role."""
    m = re.match(r"^blocks\.\d+\.(.+)$", name)
    return m.group(1) if m else name


def similarity_order(q: torch.Tensor) -> torch.Tensor:
    """Greedy L1 nearest-neighbour order of the rows of ``q`` (int8 [rows, cols]), from row 0:
    each next row is the unused one closest to the current (ties: the first in the working order).
    Integer distances, so the order is exact on any device. Returns int64 [rows]."""
    rows = q.shape[0]
    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    work = q.to(dev, torch.int16).clone()
    idx = torch.arange(rows, device=dev)
    order = torch.empty(rows, dtype=torch.int64)
    order[0] = 0
    cur = work[0].clone()
    n = rows - 1
    work[0], idx[0] = work[n].clone(), idx[n].clone()  # remove row 0: move the last row into its slot
    for k in range(1, rows):
        d = (work[:n] - cur).abs().sum(dim=1, dtype=torch.int32)
        j = int(torch.argmin(d))
        order[k] = int(idx[j])
        cur = work[j].clone()
        n -= 1
        work[j], idx[j] = work[n].clone(), idx[n].clone()
    return order


def column_major_bytes(t: QTensor, sort: bool) -> tuple[bytes, torch.Tensor | None]:
    """The bytes of ``t.q`` as stored by the per-group layout (rows permuted if ``sort``, then
    transposed) and the permutation (stored row i = original row perm[i]) or None."""
    q = t.q.to(torch.int8)
    perm = similarity_order(q) if sort and q.shape[0] > 2 else None
    if perm is not None:
        q = q[perm]
    return q.t().contiguous().numpy().tobytes(), perm


def q_from_column_major(raw: bytes, rows: int, cols: int, perm: np.ndarray | None) -> torch.Tensor:
    """Inverse of ``column_major_bytes`` (``perm`` already checked to be a permutation)."""
    stored = np.frombuffer(raw, dtype=np.int8).reshape(cols, rows).T
    if perm is None:
        return torch.from_numpy(np.ascontiguousarray(stored))
    q = np.empty((rows, cols), dtype=np.int8)
    q[perm] = stored
    return torch.from_numpy(q)


# ---------------------------------------------------------------------------------------------
# lrzip


def lrzip_binary() -> str | None:
    """The ``lrzip`` executable on PATH, or None."""
    return shutil.which("lrzip")


def _run_lrzip(args: list[str], workdir: str, what: str) -> None:
    exe = lrzip_binary()
    if exe is None:
        raise CodecError(f"{what} needs the lrzip binary, which is not on PATH "
                         "(install the Debian package lrzip)")
    env = {"PATH": os.environ.get("PATH", ""), "LRZIP": "NOCONFIG", "HOME": workdir, "TMPDIR": workdir,
           "TMP": workdir}
    if os.environ.get("LD_LIBRARY_PATH"):  # an lrzip unpacked outside the system dirs finds its libraries
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    try:
        r = subprocess.run([exe, *args], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=LRZIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CodecError(f"{what}: lrzip did not finish in {LRZIP_TIMEOUT_S:.0f}s") from None
    except OSError as e:
        raise CodecError(f"{what}: cannot run {exe} ({e.strerror or e})") from None
    if r.returncode != 0:
        tail = " ".join((r.stderr or r.stdout or b"").decode("utf-8", "replace").split())[-300:]
        raise CodecError(f"{what}: lrzip exited with status {r.returncode}: {tail or 'no message'}")


def lrzip_compress(data: bytes) -> bytes:
    """``data`` compressed by ``lrzip -z -L 9 -p 1`` (deterministic)."""
    with tempfile.TemporaryDirectory(prefix="pgolf-lrzip-") as d:
        src, dst = os.path.join(d, "stream"), os.path.join(d, "stream.lrz")
        with open(src, "wb") as f:
            f.write(data)
        _run_lrzip(["-Q", *LRZIP_ARGS, "-o", dst, src], d, "lrzip compression")
        with open(dst, "rb") as f:
            return f.read()


def lrzip_declared_size(comp: bytes) -> int | None:
    """The decompressed size an lrzip (0.6 format) stream declares in its header, or None."""
    if len(comp) < 14 or comp[:4] != _LRZIP_MAGIC:
        return None
    return int.from_bytes(comp[6:14], "little")


def lrzip_decompress(comp: bytes, raw_len: int) -> bytes:
    """Decompress an lrzip stream that must hold exactly ``raw_len`` bytes (checked before
    running lrzip, from the stream's header, and after)."""
    declared = lrzip_declared_size(comp)
    if declared is None:
        raise CodecError("not an lrzip stream (bad magic)")
    if declared != raw_len:
        raise CodecError(f"lrzip stream declares {declared} bytes, the artifact header {raw_len}")
    with tempfile.TemporaryDirectory(prefix="pgolf-lrunzip-") as d:
        src, dst = os.path.join(d, "stream.lrz"), os.path.join(d, "stream")
        with open(src, "wb") as f:
            f.write(comp)
        _run_lrzip(["-Q", "-d", "-o", dst, src], d, "lrzip decompression")
        n = os.path.getsize(dst)
        if n != raw_len:
            raise CodecError(f"lrzip stream decompressed to {n} bytes, declared {raw_len}")
        with open(dst, "rb") as f:
            return f.read()
