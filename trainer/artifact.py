"""The compressed model file (``*.ptz``): a documented binary layout, no pickle, nothing executed.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic b"PGQM\\r\\n\\x1a\\n"
    8       2     format version (u16) = 2 (version 1 files are still read)
    10      1     codec id (u8): 0 none, 1 brotli (quality 11), 2 zstd (level 22), 3 pergroup
    11      1     flags (u8) = 0
    12      4     stored header length Hc (u32)
    16      4     header length after decompression Hr (u32)
    20      8     total decompressed payload bytes R (u64) = sum of the segments' "raw"
    28      4     CRC-32 (zlib) of bytes [0, 28) followed by bytes [32, end of file)
    32      Hc    header: UTF-8 JSON, keys sorted (below), compressed with the codec (brotli for
                  pergroup)
    32+Hc   ...   segments, each compressed on its own with its codec, back to back in header
                  order; the file ends exactly after the last one

Header JSON::

    {"format": "pgolf-qmodel",
     "segments": [{"cls": CLASS, "codec": CODEC, "group": str, "raw": bytes after decompression,
                   "comp": bytes in the file}, ...],
     "tensors": [{"name": str, "cls": CLASS, "kind": "int" | "raw", "shape": [int, ...],
                  "dtype": original dtype name, "bits": int, "method": str, "clip_sigmas": float,
                  "q_layout": "rows" | "cols", "lqer_bits": int,
                  "parts": [[part, store dtype, segment index, offset in segment, bytes], ...]}, ...],
     "aliases": {name: name of the stored tensor it shares storage with},
     "meta": {...free-form JSON...}}

A segment's CLASS is a tensor class (attn | mlp | embed | other | gate | small) or ``lqer``; its
CODEC is none | brotli | zstd | lrzip (version 1: absent, the file's codec); ``group`` (optional)
names what it holds. An ``int`` tensor ([rows, cols] = [prod(shape[:-1]), shape[-1]]) has parts
``q`` (int8, rows*cols values) and ``scale`` (float16, one per row): it dequantizes to
``q * scale[:, None]``. ``q`` is row-major, or with ``q_layout == "cols"`` column-major (the
transpose); an optional ``perm`` part (int16 if rows <= 32768, else int32) says stored row i is
row perm[i]. With ``lqer_bits`` b > 0 it also has ``lqer_a`` (int8 [r, rows]), ``lqer_a_scale``
(float16, one per group), ``lqer_b`` (int8 [r, cols]), ``lqer_b_scale``, all in ``lqer``
segments; it then dequantizes to ``q * scale + A^T B`` (trainer/quant.py). A ``raw`` tensor has one
part ``data``. A part whose element size s > 1 is byte-shuffled: all elements' byte 0, then all
byte 1, ..., byte s-1 (grouping bytes by significance compresses better). The parts of a segment
tile it exactly; the parts of a tensor lie in segments of its class (LQER factors: ``lqer``), so
the bytes per class are exact.

``COMPRESSOR=brotli|zstd|none`` (and ``auto``: the smaller of brotli and zstd) store per class:
q values, then scales, then raw data, in segments of at most ``ARTIFACT_SEGMENT_BYTES``, all with
that codec. ``COMPRESSOR=pergroup`` (trainer/pergroup.py) stores the q values of the GPTQ classes
column-major by role, in lrzip (or, without the binary, brotli) streams, and the rest as brotli.

``load_artifact`` checks, in order: magic, version, codec, flags, declared sizes against the file
size and ``max_decompressed_bytes``, the CRC, the header against the segments, then decompresses
each segment with an output cap (lrzip: its declared size first) and checks its exact size, the
value ranges and the permutations.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import brotli
import numpy as np
import torch

# isort: off
from trainer.pergroup import PERGROUP_SORTED_ROLES, PERGROUP_STREAM_BYTES, CodecError, column_major_bytes
from trainer.pergroup import lrzip_binary, lrzip_compress, lrzip_decompress, q_from_column_major, weight_role
# isort: on
from trainer.quant import QUANT_CLASSES, TENSOR_CLASSES, QTensor, QuantizedModel

try:  # optional: zstd is the alternative codec
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

ARTIFACT_MAGIC = b"PGQM\r\n\x1a\n"
ARTIFACT_VERSION = 2
ARTIFACT_READABLE_VERSIONS = (1, 2)
ARTIFACT_CODEC_IDS = {"none": 0, "brotli": 1, "zstd": 2, "pergroup": 3}
ARTIFACT_CODEC_NAMES = {v: k for k, v in ARTIFACT_CODEC_IDS.items()}
SEGMENT_CODECS = ("none", "brotli", "zstd", "lrzip")
SEGMENT_CLASSES = TENSOR_CLASSES + ("lqer",)
# magic, version, codec, flags, header stored length, header raw length, payload raw length, crc
_ARTIFACT_FIXED = struct.Struct("<8sHBBIIQI")
ARTIFACT_FIXED_BYTES = _ARTIFACT_FIXED.size  # 32
_ARTIFACT_CRC_AT = ARTIFACT_FIXED_BYTES - 4
ARTIFACT_SEGMENT_BYTES = 4 << 20  # segments are compressed in parallel; this size costs ~nothing in ratio
ARTIFACT_MAX_DECOMPRESSED = 1 << 30  # a 16 MB artifact of int8 values is ~100 MB raw at most
ARTIFACT_MAX_HEADER_BYTES = 64 << 20
ARTIFACT_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
ARTIFACT_DTYPE_NAMES = {v: k for k, v in ARTIFACT_DTYPES.items()}
_LQER_PARTS = ("lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale")


class ArtifactError(ValueError):
    """A model file that is missing, corrupted, truncated, not in this format, or that needs a
    decompressor this machine lacks."""


@dataclass
class EncodedArtifact:
    blob: bytes  # the whole file
    codec: str  # the codec actually used (``auto`` resolved)
    class_bytes: dict[str, int]  # compressed bytes per segment class, plus "header"; sums to len(blob)
    raw_bytes: int  # decompressed payload bytes
    group_bytes: dict[str, int] = field(default_factory=dict)  # "group[codec]" -> compressed bytes
    seconds: float = 0.0  # wall time of the encoding


# ---------------------------------------------------------------------------------------------
# encoding


def byte_shuffle(raw: bytes, itemsize: int) -> bytes:
    if itemsize <= 1 or not raw:
        return raw
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize)
    return a.T.tobytes()


def byte_unshuffle(raw: bytes, itemsize: int) -> bytes:
    if itemsize <= 1 or not raw:
        return raw
    a = np.frombuffer(raw, dtype=np.uint8).reshape(itemsize, -1)
    return a.T.tobytes()


def _raw_tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _qtensor_parts(t: QTensor) -> list[tuple[str, torch.Tensor, str]]:
    """(part, tensor, segment class) of every part of ``t``, in storage order."""
    if t.kind != "int":
        return [("data", t.data, t.cls)]
    parts = [("q", t.q.to(torch.int8), t.cls), ("scale", t.scale.to(torch.float16), t.cls)]
    if t.lqer_a is not None:
        parts += [("lqer_a", t.lqer_a.to(torch.int8), "lqer"),
                  ("lqer_a_scale", t.lqer_a_scale.to(torch.float16), "lqer"),
                  ("lqer_b", t.lqer_b.to(torch.int8), "lqer"),
                  ("lqer_b_scale", t.lqer_b_scale.to(torch.float16), "lqer")]
    return parts


class _Segments:
    """Builds the segment list: parts are appended to the current segment of a (class, group)."""

    def __init__(self):
        self.segments: list[dict] = []  # {"cls", "codec", "group", "chunks", "raw"}
        self.placed: dict[str, list] = {}

    def start(self, cls: str, codec: str, group: str) -> None:
        self.segments.append({"cls": cls, "codec": codec, "group": group, "chunks": [], "raw": 0})

    def add(self, name: str, part: str, raw: bytes, dtype_name: str, cap: int | None = None) -> None:
        cur = self.segments[-1]
        if cap is not None and cur["raw"] > 0 and cur["raw"] + len(raw) > cap:
            self.start(cur["cls"], cur["codec"], cur["group"])
            cur = self.segments[-1]
        where = [part, dtype_name, len(self.segments) - 1, cur["raw"], len(raw)]
        self.placed.setdefault(name, []).append(where)
        cur["chunks"].append(raw)
        cur["raw"] += len(raw)


def _dtype_name(name: str, tensor: torch.Tensor) -> str:
    dtype_name = ARTIFACT_DTYPE_NAMES.get(tensor.dtype)
    if dtype_name is None:
        raise ValueError(f"tensor {name}: dtype {tensor.dtype} cannot be stored")
    return dtype_name


def _class_segments(qm: QuantizedModel, codec: str, b: _Segments, skip: set[tuple[str, str]],
                    extra: dict[str, list[tuple[str, torch.Tensor]]]) -> None:
    """Per segment class: q values first, then scales, then raw data (then LQER factors), in
    segments of at most ARTIFACT_SEGMENT_BYTES; ``skip`` holds (name, part) stored elsewhere and
    ``extra`` parts (e.g. permutations) stored after a tensor's others."""
    for cls in SEGMENT_CLASSES:
        items = []
        for order in ("q", "scale", "perm", "data") + _LQER_PARTS:
            for name, t in qm.tensors.items():
                parts = _qtensor_parts(t) + [(p, x, t.cls) for p, x in extra.get(name, [])]
                for part, tensor, seg_cls in parts:
                    if part == order and seg_cls == cls and (name, part) not in skip:
                        items.append((name, part, tensor))
        if not items:
            continue
        b.start(cls, codec, cls)
        for name, part, tensor in items:
            raw = byte_shuffle(_raw_tensor_bytes(tensor), tensor.element_size())
            b.add(name, part, raw, _dtype_name(name, tensor), cap=ARTIFACT_SEGMENT_BYTES)


def _pergroup_segments(qm: QuantizedModel, stream_codec: str, b: _Segments) -> tuple[set, dict, dict]:
    """The q values of the GPTQ classes, column-major, by role (trainer/pergroup.py)."""
    roles: dict[str, list[str]] = {}
    for name, t in qm.tensors.items():
        if t.kind == "int" and t.cls in QUANT_CLASSES:
            roles.setdefault(weight_role(name), []).append(name)
    skip, extra, layout = set(), {}, {}
    for role, names in roles.items():
        b.start(qm.tensors[names[0]].cls, stream_codec, f"q:{role}")
        for name in names:
            t = qm.tensors[name]
            if t.cls != b.segments[-1]["cls"]:  # one role, two classes: keep segments single-class
                b.start(t.cls, stream_codec, f"q:{role}")
            raw, perm = column_major_bytes(t, role in PERGROUP_SORTED_ROLES)
            b.add(name, "q", raw, "int8", cap=PERGROUP_STREAM_BYTES)
            skip.add((name, "q"))
            layout[name] = "cols"
            if perm is not None:
                extra[name] = [("perm", perm.to(torch.int16 if t.q.shape[0] <= 32768 else torch.int32))]
    return skip, extra, layout


def _codec_compress(codec: str, data: bytes) -> bytes:
    if codec == "none":
        return data
    if codec == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    if codec == "zstd":
        if zstandard is None:
            raise ValueError("COMPRESSOR=zstd but the zstandard module is not installed")
        return zstandard.ZstdCompressor(level=22).compress(data)
    if codec == "lrzip":
        try:
            return lrzip_compress(data)
        except CodecError as e:
            raise ValueError(str(e)) from None
    raise ValueError(f"unknown codec {codec!r} (known: brotli, zstd, auto, pergroup, none)")


def default_stream_codec() -> str:
    """The per-group streams' codec on this machine: lrzip if its binary is on PATH, else brotli."""
    return "lrzip" if lrzip_binary() is not None else "brotli"


def encode_artifact(qm: QuantizedModel, codec: str = "brotli",
                    stream_codec: str | None = None) -> EncodedArtifact:
    """The file's bytes (deterministic). ``codec="auto"`` encodes with brotli and zstd and keeps
    the smaller (brotli on a tie, or if zstandard is missing). ``codec="pergroup"``: the q streams
    use ``stream_codec`` (default: ``default_stream_codec()``)."""
    t0 = time.perf_counter()
    if sys.byteorder != "little":
        raise ValueError("artifact encoding assumes a little-endian machine")
    if codec == "auto":
        options = ["brotli"] + (["zstd"] if zstandard is not None else [])
        encoded = [encode_artifact(qm, c) for c in options]
        return min(encoded, key=lambda e: len(e.blob))
    if codec not in ARTIFACT_CODEC_IDS:
        raise ValueError(f"unknown codec {codec!r} (known: brotli, zstd, auto, pergroup, none)")
    b = _Segments()
    skip, extra, layout = set(), {}, {}
    if codec == "pergroup":
        stream_codec = stream_codec or default_stream_codec()
        if stream_codec not in SEGMENT_CODECS:
            raise ValueError(f"unknown stream codec {stream_codec!r} (known: {', '.join(SEGMENT_CODECS)})")
        skip, extra, layout = _pergroup_segments(qm, stream_codec, b)
    _class_segments(qm, "brotli" if codec == "pergroup" else codec, b, skip, extra)
    datas = [b"".join(s["chunks"]) for s in b.segments]
    workers = max(1, min(len(datas), os.cpu_count() or 1))
    # brotli/zstd release the GIL, lrzip runs in its own process; largest first for a short tail
    order = sorted(range(len(datas)), key=lambda i: -len(datas[i]))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(order, pool.map(lambda i: _codec_compress(b.segments[i]["codec"], datas[i]), order)))
    comps = [done[i] for i in range(len(datas))]
    header = {
        "format": "pgolf-qmodel",
        "segments": [{"cls": s["cls"], "codec": s["codec"], "group": s["group"], "raw": s["raw"],
                      "comp": len(c)} for s, c in zip(b.segments, comps)],
        "tensors": [_tensor_header(t, b.placed.get(name, []), layout.get(name, "rows"))
                    for name, t in qm.tensors.items()],
        "aliases": dict(qm.aliases),
        "meta": qm.meta,
    }
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    header_codec = "brotli" if codec == "pergroup" else codec
    hbytes = _codec_compress(header_codec, hjson)  # ~10x smaller: names and offsets of ~100 tensors
    raw_total = sum(s["raw"] for s in b.segments)
    body = hbytes + b"".join(comps)
    fields = (ARTIFACT_MAGIC, ARTIFACT_VERSION, ARTIFACT_CODEC_IDS[codec], 0, len(hbytes), len(hjson),
              raw_total)
    crc = zlib.crc32(body, zlib.crc32(_ARTIFACT_FIXED.pack(*fields, 0)[:_ARTIFACT_CRC_AT]))
    blob = _ARTIFACT_FIXED.pack(*fields, crc) + body
    class_bytes = {c: 0 for c in SEGMENT_CLASSES}
    group_bytes: dict[str, int] = {}
    for s, c in zip(b.segments, comps):
        class_bytes[s["cls"]] += len(c)
        key = f"{s['group']}[{s['codec']}]"
        group_bytes[key] = group_bytes.get(key, 0) + len(c)
    class_bytes["header"] = ARTIFACT_FIXED_BYTES + len(hbytes)
    return EncodedArtifact(blob=blob, codec=codec, class_bytes=class_bytes, raw_bytes=raw_total,
                           group_bytes=group_bytes, seconds=time.perf_counter() - t0)


def _tensor_header(t: QTensor, parts: list, q_layout: str) -> dict:
    return {"name": t.name, "cls": t.cls, "kind": t.kind, "shape": list(t.shape),
            "dtype": ARTIFACT_DTYPE_NAMES[t.dtype], "bits": int(t.bits), "method": t.method,
            "clip_sigmas": float(t.clip_sigmas), "q_layout": q_layout, "lqer_bits": int(t.lqer_bits),
            "parts": parts}


def write_artifact(path: str, blob: bytes) -> int:
    """Write ``blob`` to ``path`` via a temporary file and a rename (never half-written)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.getsize(path)


def save_artifact(path: str, qm: QuantizedModel, codec: str = "brotli") -> int:
    """Encode and write atomically; returns the bytes written (the file's size)."""
    return write_artifact(path, encode_artifact(qm, codec).blob)


def bytes_by_class(qm: QuantizedModel, codec: str | None = None) -> dict[str, int]:
    """Bytes per segment class. ``codec=None``: the uncompressed payload per class of the
    brotli/zstd layout (fast); a codec: the compressed bytes per class as the file would hold
    them, plus "header"."""
    if codec is None:
        b = _Segments()
        _class_segments(qm, "none", b, set(), {})
        out = {c: 0 for c in SEGMENT_CLASSES}
        for s in b.segments:
            out[s["cls"]] += s["raw"]
        return out
    return encode_artifact(qm, codec).class_bytes


# ---------------------------------------------------------------------------------------------
# decoding


@dataclass
class ArtifactInfo:
    codec: str
    version: int
    header: dict
    raw_bytes: int
    file_bytes: int
    body_offset: int  # where the first segment starts


def _read_artifact_checked(path: str, max_decompressed_bytes: int) -> tuple[bytes, ArtifactInfo]:
    def fail(msg: str):
        raise ArtifactError(f"{path}: {msg}")

    try:
        size = os.path.getsize(path)
        if size > max_decompressed_bytes + ARTIFACT_MAX_HEADER_BYTES + ARTIFACT_FIXED_BYTES:
            fail(f"file is {size} bytes, larger than any artifact this loader accepts")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read artifact ({e.strerror or e})") from None
    if not data:
        fail("empty file (0 bytes), not a model artifact")
    if len(data) < ARTIFACT_FIXED_BYTES:
        if not ARTIFACT_MAGIC.startswith(data[: len(ARTIFACT_MAGIC)]):
            fail("not a pgolf model artifact (wrong magic)")
        fail(f"truncated: {len(data)} bytes, shorter than the {ARTIFACT_FIXED_BYTES}-byte fixed header")
    magic, version, codec_id, flags, hlen, hraw, raw_len, crc = _ARTIFACT_FIXED.unpack_from(data, 0)
    if magic != ARTIFACT_MAGIC:
        fail(f"not a pgolf model artifact (wrong magic {magic!r}, expected {ARTIFACT_MAGIC!r})")
    if version not in ARTIFACT_READABLE_VERSIONS:
        fail(f"unsupported format version {version} (this loader reads versions "
             f"{', '.join(map(str, ARTIFACT_READABLE_VERSIONS))})")
    if codec_id not in ARTIFACT_CODEC_NAMES or (version == 1 and codec_id == ARTIFACT_CODEC_IDS["pergroup"]):
        known = ", ".join(f"{v}={k}" for k, v in ARTIFACT_CODEC_IDS.items())
        fail(f"unknown codec id {codec_id} (known: {known})")
    if flags != 0:
        fail(f"unknown flags {flags:#x}")
    if raw_len > max_decompressed_bytes:
        fail(f"declares {raw_len} decompressed bytes, over the limit of {max_decompressed_bytes}")
    if hraw > ARTIFACT_MAX_HEADER_BYTES:
        fail(f"declares a {hraw}-byte header, over the limit of {ARTIFACT_MAX_HEADER_BYTES}")
    if ARTIFACT_FIXED_BYTES + hlen > len(data):
        fail(f"truncated or corrupted: header length {hlen} does not fit in the file's {len(data)} bytes")
    if zlib.crc32(data[ARTIFACT_FIXED_BYTES:], zlib.crc32(data[:_ARTIFACT_CRC_AT])) != crc:
        fail("checksum mismatch: the file is corrupted or truncated")
    codec = ARTIFACT_CODEC_NAMES[codec_id]
    body_at = ARTIFACT_FIXED_BYTES + hlen
    hjson = _codec_decompress("brotli" if codec == "pergroup" else codec, data[ARTIFACT_FIXED_BYTES:body_at],
                              hraw, fail)
    try:
        header = json.loads(hjson.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"header is not valid JSON ({e})")
    info = ArtifactInfo(codec, version, header, raw_len, len(data), body_at)
    _check_artifact_header(info, fail)
    return data, info


def _check_artifact_header(info: ArtifactInfo, fail) -> None:
    h = info.header
    if not isinstance(h, dict) or h.get("format") != "pgolf-qmodel":
        fail("header is not a pgolf-qmodel header")
    segs, tensors = h.get("segments"), h.get("tensors")
    if not isinstance(segs, list) or not isinstance(tensors, list):
        fail("header lacks the segments/tensors lists")
    if not isinstance(h.get("aliases", {}), dict) or not isinstance(h.get("meta", {}), dict):
        fail("header aliases/meta must be objects")
    for i, s in enumerate(segs):
        if not (isinstance(s, dict) and s.get("cls") in SEGMENT_CLASSES and _is_json_uint(s.get("raw"))
                and _is_json_uint(s.get("comp")) and isinstance(s.get("group", ""), str)):
            fail(f"segment {i} entry is malformed: {s!r}"[:200])
        if info.version == 1:
            s["codec"] = info.codec
        allowed = SEGMENT_CODECS if info.codec == "pergroup" else (info.codec,)
        if s.get("codec") not in allowed:
            fail(f"segment {i}: codec {s.get('codec')!r} not allowed in a {info.codec} file")
    if sum(s["raw"] for s in segs) != info.raw_bytes:
        fail(f"segments hold {sum(s['raw'] for s in segs)} raw bytes, the fixed header declares "
             f"{info.raw_bytes}")
    comp_total = sum(s["comp"] for s in segs)
    if info.body_offset + comp_total != info.file_bytes:
        fail(f"segments hold {comp_total} compressed bytes but the file has "
             f"{info.file_bytes - info.body_offset} after the header (truncated or padded)")
    spans: list[list[tuple[int, int]]] = [[] for _ in segs]
    names = set()
    for t in tensors:
        _check_artifact_tensor(t, segs, spans, fail)
        if t["name"] in names:
            fail(f"tensor {t['name']} appears twice")
        names.add(t["name"])
    for i, sp in enumerate(spans):
        pos = 0
        for off, n in sorted(sp):
            if off != pos:
                fail(f"segment {i}: parts do not tile it (gap or overlap at byte {pos})")
            pos = off + n
        if pos != segs[i]["raw"]:
            fail(f"segment {i}: parts cover {pos} of its {segs[i]['raw']} bytes")
    for a, target in h.get("aliases", {}).items():
        if not isinstance(a, str) or target not in names or a in names:
            fail(f"alias {a!r} -> {target!r} does not name a stored tensor")


def _is_json_uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _int_part_specs(t: dict, shape: list, fail) -> dict:
    """The parts an int tensor must have: part -> (dtype names allowed, bytes)."""
    bits, lbits = t.get("bits"), t.get("lqer_bits", 0)
    if len(shape) < 2 or not (isinstance(bits, int) and 2 <= bits <= 8):
        fail(f"tensor {t['name']}: quantized tensors need 2+ dims and 2..8 bits")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    want = {"q": (("int8",), rows * cols), "scale": (("float16",), rows * 2)}
    if t.get("q_layout", "rows") not in ("rows", "cols"):
        fail(f"tensor {t['name']}: unknown q_layout {t.get('q_layout')!r}")
    if any(p[0] == "perm" for p in t["parts"] if isinstance(p, list) and p):
        want["perm"] = (("int16",), rows * 2) if rows <= 32768 else (("int32",), rows * 4)
    if not (isinstance(lbits, int) and (lbits == 0 or 2 <= lbits <= 8)):
        fail(f"tensor {t['name']}: lqer_bits {lbits!r} must be 0 or 2..8")
    if lbits:
        got = {p[0]: p for p in t["parts"] if isinstance(p, list) and len(p) == 5}
        if not all(k in got and _is_json_uint(got[k][4]) for k in _LQER_PARTS):
            fail(f"tensor {t['name']}: LQER parts missing")
        na, nb = got["lqer_a"][4], got["lqer_b"][4]  # int8: bytes = values
        r = na // rows if rows else 0
        if r < 1 or na != r * rows or nb != r * cols:
            fail(f"tensor {t['name']}: LQER factors of {na} and {nb} values do not fit [{rows}, {cols}]")
        for f, n in (("lqer_a", na), ("lqer_b", nb)):
            groups = got[f + "_scale"][4] // 2
            if groups < 1 or n % groups or got[f + "_scale"][4] % 2:
                fail(f"tensor {t['name']}: {f} has {n} values in {groups} groups")
            want[f] = (("int8",), n)
            want[f + "_scale"] = (("float16",), groups * 2)
    return want


def _check_artifact_tensor(t, segs, spans, fail) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        fail(f"malformed tensor entry {t!r}"[:200])
    name = t["name"]
    shape = t.get("shape")
    if not (isinstance(shape, list) and all(_is_json_uint(d) for d in shape)):
        fail(f"tensor {name}: bad shape {shape!r}")
    if t.get("dtype") not in ARTIFACT_DTYPES or t.get("cls") not in TENSOR_CLASSES:
        fail(f"tensor {name}: unknown dtype {t.get('dtype')!r} or class {t.get('cls')!r}")
    parts = t.get("parts")
    if not isinstance(parts, list):
        fail(f"tensor {name}: parts missing")
    numel = int(np.prod(shape)) if shape else 1
    if t.get("kind") == "int":
        want = _int_part_specs(t, shape, fail)
    elif t.get("kind") == "raw":
        want = {"data": (None, None)}
    else:
        fail(f"tensor {name}: unknown kind {t.get('kind')!r}")
    got = {}
    for p in parts:
        if not (isinstance(p, list) and len(p) == 5 and p[0] in want and p[1] in ARTIFACT_DTYPES
                and all(_is_json_uint(x) for x in p[2:])):
            fail(f"tensor {name}: malformed part {p!r}"[:200])
        part, dt, seg, off, n = p
        if part in got:
            fail(f"tensor {name}: part {part} appears twice")
        if seg >= len(segs) or off + n > segs[seg]["raw"]:
            fail(f"tensor {name}: part {part} lies outside segment {seg}")
        want_cls = "lqer" if part in _LQER_PARTS else t["cls"]
        if segs[seg]["cls"] != want_cls:
            fail(f"tensor {name}: part {part} is in a segment of class {segs[seg]['cls']}")
        wdt, wn = want[part]
        if part == "data":
            wdt, wn = (dt,), numel * ARTIFACT_DTYPES[dt].itemsize
        if dt not in wdt or n != wn:
            fail(f"tensor {name}: part {part} has {n} bytes of {dt}, expected {wn} bytes of {wdt[0]} "
                 f"for shape {shape}")
        got[part] = p
        spans[seg].append((off, n))
    if set(got) != set(want):
        fail(f"tensor {name}: parts {sorted(got)} (expected {sorted(want)})")


def _codec_decompress(codec: str, comp: bytes, raw_len: int, fail) -> bytes:
    """Decompress the header or one segment, never producing more than ``raw_len`` (+1) bytes."""
    if codec == "none":
        out = comp
    elif codec == "brotli":
        out = _brotli_capped(comp, raw_len, fail)
    elif codec == "zstd":
        if zstandard is None:
            fail("uses zstd but the zstandard module is not installed")
        out = bytearray()
        try:
            with zstandard.ZstdDecompressor().stream_reader(comp) as r:
                while True:
                    piece = r.read(min(1 << 20, raw_len + 1 - len(out)))
                    if not piece:
                        break
                    out += piece
                    if len(out) > raw_len:
                        break
        except zstandard.ZstdError as e:
            fail(f"zstd data is corrupted ({e})")
    else:  # pragma: no cover - the codec id was checked
        fail(f"unknown codec {codec}")
    if len(out) != raw_len:
        fail(f"a compressed block decompresses to {'more' if len(out) > raw_len else len(out)} bytes, "
             f"declared {raw_len}")
    return bytes(out)


def _brotli_capped(comp: bytes, raw_len: int, fail) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    try:
        try:
            out += d.process(comp, output_buffer_limit=raw_len + 1)
        except TypeError:  # brotli < 1.2 has no output limit: feed small pieces, check as we go
            for i in range(0, len(comp), 4096):
                out += d.process(comp[i : i + 4096])
                if len(out) > raw_len:
                    return bytes(out)
            return bytes(out) if d.is_finished() else fail("brotli stream is truncated")
        while len(out) <= raw_len and not d.can_accept_more_data():
            out += d.process(b"", output_buffer_limit=raw_len + 1 - len(out))
        if len(out) <= raw_len and not d.is_finished():
            fail("brotli stream is truncated")
    except brotli.error as e:
        fail(f"brotli data is corrupted ({e})")
    return bytes(out)


def read_artifact_info(path: str, max_decompressed_bytes: int = ARTIFACT_MAX_DECOMPRESSED) -> ArtifactInfo:
    """The validated header of an artifact (checksum included), without decompressing it."""
    return _read_artifact_checked(path, max_decompressed_bytes)[1]


def artifact_bytes_by_class(path: str) -> dict[str, int]:
    """Compressed bytes per segment class in the file on disk, plus "header"; sums to its size."""
    info = read_artifact_info(path)
    out = {c: 0 for c in SEGMENT_CLASSES}
    for s in info.header["segments"]:
        out[s["cls"]] += s["comp"]
    out["header"] = info.body_offset
    return out


def _decompress_segment(codec: str, comp: bytes, raw_len: int, where: str, fail) -> bytes:
    if codec != "lrzip":
        return _codec_decompress(codec, comp, raw_len, fail)
    try:
        return lrzip_decompress(comp, raw_len)
    except CodecError as e:
        fail(f"{where}: {e}")


def _part_tensor(raws: list[bytes], p: list) -> torch.Tensor:
    part, dt, seg, off, n = p
    dtype = ARTIFACT_DTYPES[dt]
    raw = byte_unshuffle(raws[seg][off : off + n], dtype.itemsize)
    return torch.frombuffer(bytearray(raw), dtype=dtype) if n else torch.empty(0, dtype=dtype)


def _int_tensor(t: dict, raws: list[bytes], fail) -> QTensor:
    parts = {p[0]: p for p in t["parts"]}
    shape = tuple(t["shape"])
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    perm = None
    if "perm" in parts:
        perm = _part_tensor(raws, parts["perm"]).numpy().astype(np.int64)
        if perm.size != rows or perm.min() < 0 or perm.max() >= rows or np.bincount(perm).max() != 1:
            fail(f"tensor {t['name']}: its row permutation is not a permutation of {rows} rows")
    if t.get("q_layout", "rows") == "cols":
        seg, off, n = parts["q"][2:]
        q = q_from_column_major(raws[seg][off : off + n], rows, cols, perm)
    else:
        q = _part_tensor(raws, parts["q"]).reshape(rows, cols)
        if perm is not None:
            q2 = torch.empty_like(q)
            q2[torch.from_numpy(perm)] = q
            q = q2
    qmax = 2 ** (t["bits"] - 1) - 1
    if q.numel() and int(q.to(torch.int16).abs().max()) > qmax:
        fail(f"tensor {t['name']}: values outside [-{qmax}, {qmax}] for int{t['bits']}")
    out = QTensor(t["name"], t["cls"], "int", shape, ARTIFACT_DTYPES[t["dtype"]], bits=t["bits"], q=q,
                  scale=_part_tensor(raws, parts["scale"]), method=str(t.get("method", "")),
                  clip_sigmas=float(t.get("clip_sigmas", 0.0)))
    lbits = int(t.get("lqer_bits", 0))
    if lbits:
        a, b = _part_tensor(raws, parts["lqer_a"]), _part_tensor(raws, parts["lqer_b"])
        r = a.numel() // rows
        lo, hi = -(2 ** (lbits - 1)), 2 ** (lbits - 1) - 1
        for f in (a, b):
            if f.numel() and (int(f.min()) < lo or int(f.max()) > hi):
                fail(f"tensor {t['name']}: LQER factor values outside [{lo}, {hi}] for int{lbits}")
        out.lqer_bits = lbits
        out.lqer_a, out.lqer_a_scale = a.reshape(r, rows), _part_tensor(raws, parts["lqer_a_scale"])
        out.lqer_b, out.lqer_b_scale = b.reshape(r, cols), _part_tensor(raws, parts["lqer_b_scale"])
    return out


def load_artifact(path: str, max_decompressed_bytes: int = ARTIFACT_MAX_DECOMPRESSED) -> QuantizedModel:
    """Read and validate an artifact; any problem raises ``ArtifactError`` naming the file (an
    lrzip artifact on a machine without the binary included)."""

    def fail(msg: str):
        raise ArtifactError(f"{path}: {msg}")

    data, info = _read_artifact_checked(path, max_decompressed_bytes)
    segs = info.header["segments"]
    if any(s["codec"] == "lrzip" for s in segs) and lrzip_binary() is None:
        fail("its weights are compressed with lrzip (COMPRESSOR=pergroup), and the lrzip binary is not "
             "on PATH: install the Debian package lrzip to read it")
    starts = np.cumsum([info.body_offset] + [s["comp"] for s in segs]).tolist()
    jobs = [(s["codec"], data[starts[i] : starts[i] + s["comp"]], s["raw"], f"segment {i} ({s['codec']})")
            for i, s in enumerate(segs)]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # lrzip streams decode in parallel
        raws = list(pool.map(lambda j: _decompress_segment(*j, fail), jobs))
    tensors: dict[str, QTensor] = {}
    for t in info.header["tensors"]:
        if t["kind"] == "int":
            tensors[t["name"]] = _int_tensor(t, raws, fail)
        else:
            (p,) = t["parts"]
            tensors[t["name"]] = QTensor(t["name"], t["cls"], "raw", tuple(t["shape"]),
                                         ARTIFACT_DTYPES[t["dtype"]],
                                         data=_part_tensor(raws, p).reshape(tuple(t["shape"])))
    return QuantizedModel(tensors=tensors, aliases=dict(info.header.get("aliases", {})),
                          meta=dict(info.header.get("meta", {})))
