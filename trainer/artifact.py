"""The compressed model file (``*.ptz``): a documented binary layout, no pickle, nothing executed.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic b"PGQM\\r\\n\\x1a\\n"
    8       2     format version (u16) = 1
    10      1     codec id (u8): 0 none, 1 brotli (quality 11), 2 zstd (level 22)
    11      1     flags (u8) = 0
    12      4     stored header length Hc (u32)
    16      4     header length after decompression Hr (u32)
    20      8     total decompressed payload bytes R (u64) = sum of the segments' "raw"
    28      4     CRC-32 (zlib) of bytes [0, 28) followed by bytes [32, end of file)
    32      Hc    header: UTF-8 JSON, keys sorted (below), compressed with the codec
    32+Hc   ...   segments, each compressed on its own with the codec, back to back in header order;
                  the file ends exactly after the last one

Header JSON::

    {"format": "pgolf-qmodel",
     "segments": [{"cls": CLASS, "raw": bytes after decompression, "comp": bytes in the file}, ...],
     "tensors": [{"name": str, "cls": CLASS, "kind": "int" | "raw", "shape": [int, ...],
                  "dtype": original dtype name, "bits": int, "method": str, "clip_sigmas": float,
                  "parts": [[part, store dtype, segment index, offset in segment, bytes], ...]}, ...],
     "aliases": {name: name of the stored tensor it shares storage with},
     "meta": {...free-form JSON...}}

An ``int`` tensor has parts ``q`` (int8, rows*cols values, row-major) and ``scale`` (float16, one
per row): it dequantizes to ``q * scale[:, None]``. A ``raw`` tensor has one part ``data``. A part
whose element size s > 1 is byte-shuffled: all elements' byte 0, then all byte 1, ..., byte s-1
(grouping bytes by significance compresses better). The parts of a segment tile it exactly; one
segment holds one tensor class (attn | mlp | embed | other | small), so the bytes per class are
exact. ``load_artifact`` checks, in order: magic, version, codec, flags, declared sizes against
the file size and ``max_decompressed_bytes``, the CRC, the header against the segments, then
decompresses each segment with an output cap and checks its exact size and the value ranges.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import brotli
import numpy as np
import torch

from trainer.quant import TENSOR_CLASSES, QTensor, QuantizedModel

try:  # optional: zstd is the alternative codec
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

ARTIFACT_MAGIC = b"PGQM\r\n\x1a\n"
ARTIFACT_VERSION = 1
ARTIFACT_CODEC_IDS = {"none": 0, "brotli": 1, "zstd": 2}
ARTIFACT_CODEC_NAMES = {v: k for k, v in ARTIFACT_CODEC_IDS.items()}
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


class ArtifactError(ValueError):
    """A model file that is missing, corrupted, truncated, or not in this format."""


@dataclass
class EncodedArtifact:
    blob: bytes  # the whole file
    codec: str  # the codec actually used (``auto`` resolved)
    class_bytes: dict[str, int]  # compressed bytes per tensor class, plus "header"; sums to len(blob)
    raw_bytes: int  # decompressed payload bytes


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


def _qtensor_parts(t: QTensor) -> list[tuple[str, torch.Tensor]]:
    if t.kind == "int":
        return [("q", t.q.to(torch.int8)), ("scale", t.scale.to(torch.float16))]
    return [("data", t.data)]


def _segment_layout(qm: QuantizedModel):
    """Assign every part to a segment: per class, q values first, then scales, then raw data."""
    segments: list[dict] = []  # {"cls", "chunks": [bytes], "raw"}
    placed: dict[str, list] = {name: [] for name in qm.tensors}
    for cls in TENSOR_CLASSES:
        items = []
        for order in ("q", "scale", "data"):
            for name, t in qm.tensors.items():
                if t.cls != cls:
                    continue
                for part, tensor in _qtensor_parts(t):
                    if part == order:
                        items.append((name, part, tensor))
        cur = None
        for name, part, tensor in items:
            dtype_name = ARTIFACT_DTYPE_NAMES.get(tensor.dtype)
            if dtype_name is None:
                raise ValueError(f"tensor {name}: dtype {tensor.dtype} cannot be stored")
            raw = byte_shuffle(_raw_tensor_bytes(tensor), tensor.element_size())
            if cur is None or (cur["raw"] > 0 and cur["raw"] + len(raw) > ARTIFACT_SEGMENT_BYTES):
                cur = {"cls": cls, "chunks": [], "raw": 0}
                segments.append(cur)
            placed[name].append([part, dtype_name, len(segments) - 1, cur["raw"], len(raw)])
            cur["chunks"].append(raw)
            cur["raw"] += len(raw)
    return segments, placed


def _codec_compress(codec: str, data: bytes) -> bytes:
    if codec == "none":
        return data
    if codec == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    if codec == "zstd":
        if zstandard is None:
            raise ValueError("COMPRESSOR=zstd but the zstandard module is not installed")
        return zstandard.ZstdCompressor(level=22).compress(data)
    raise ValueError(f"unknown codec {codec!r} (known: brotli, zstd, auto, none)")


def encode_artifact(qm: QuantizedModel, codec: str = "brotli") -> EncodedArtifact:
    """The file's bytes (deterministic). ``codec="auto"`` encodes with brotli and zstd and keeps
    the smaller (brotli on a tie, or if zstandard is missing)."""
    if sys.byteorder != "little":
        raise ValueError("artifact encoding assumes a little-endian machine")
    if codec == "auto":
        options = ["brotli"] + (["zstd"] if zstandard is not None else [])
        encoded = [encode_artifact(qm, c) for c in options]
        return min(encoded, key=lambda e: len(e.blob))
    if codec not in ARTIFACT_CODEC_IDS:
        raise ValueError(f"unknown codec {codec!r} (known: brotli, zstd, auto, none)")
    segments, placed = _segment_layout(qm)
    datas = [b"".join(s["chunks"]) for s in segments]
    workers = max(1, min(len(datas), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # brotli/zstd release the GIL
        comps = list(pool.map(lambda d: _codec_compress(codec, d), datas))
    header = {
        "format": "pgolf-qmodel",
        "segments": [{"cls": s["cls"], "raw": s["raw"], "comp": len(c)} for s, c in zip(segments, comps)],
        "tensors": [_tensor_header(t, placed[name]) for name, t in qm.tensors.items()],
        "aliases": dict(qm.aliases),
        "meta": qm.meta,
    }
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    hbytes = _codec_compress(codec, hjson)  # ~10x smaller: names and offsets of ~100 tensors are ~17 KB
    raw_total = sum(s["raw"] for s in segments)
    body = hbytes + b"".join(comps)
    fields = (ARTIFACT_MAGIC, ARTIFACT_VERSION, ARTIFACT_CODEC_IDS[codec], 0, len(hbytes), len(hjson),
              raw_total)
    crc = zlib.crc32(body, zlib.crc32(_ARTIFACT_FIXED.pack(*fields, 0)[:_ARTIFACT_CRC_AT]))
    blob = _ARTIFACT_FIXED.pack(*fields, crc) + body
    class_bytes = {c: 0 for c in TENSOR_CLASSES}
    for s, c in zip(segments, comps):
        class_bytes[s["cls"]] += len(c)
    class_bytes["header"] = ARTIFACT_FIXED_BYTES + len(hbytes)
    return EncodedArtifact(blob=blob, codec=codec, class_bytes=class_bytes, raw_bytes=raw_total)


def _tensor_header(t: QTensor, parts: list) -> dict:
    return {"name": t.name, "cls": t.cls, "kind": t.kind, "shape": list(t.shape),
            "dtype": ARTIFACT_DTYPE_NAMES[t.dtype], "bits": int(t.bits), "method": t.method,
            "clip_sigmas": float(t.clip_sigmas), "parts": parts}


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
    """Bytes per tensor class. ``codec=None``: the uncompressed payload per class (fast);
    a codec: the compressed bytes per class as the file would hold them, plus "header"."""
    if codec is None:
        segments, _ = _segment_layout(qm)
        out = {c: 0 for c in TENSOR_CLASSES}
        for s in segments:
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
    if version != ARTIFACT_VERSION:
        fail(f"unsupported format version {version} (this loader reads version {ARTIFACT_VERSION})")
    if codec_id not in ARTIFACT_CODEC_NAMES:
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
    hjson = _codec_decompress(codec, data[ARTIFACT_FIXED_BYTES:body_at], hraw, fail)
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
        if not (isinstance(s, dict) and s.get("cls") in TENSOR_CLASSES and _is_json_uint(s.get("raw"))
                and _is_json_uint(s.get("comp"))):
            fail(f"segment {i} entry is malformed: {s!r}"[:200])
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
        bits = t.get("bits")
        if len(shape) != 2 or not (isinstance(bits, int) and 2 <= bits <= 8):
            fail(f"tensor {name}: quantized tensors need a 2-D shape and 2..8 bits")
        want = {"q": ("int8", numel), "scale": ("float16", shape[0] * 2)}
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
        if seg >= len(segs) or off + n > segs[seg]["raw"]:
            fail(f"tensor {name}: part {part} lies outside segment {seg}")
        if segs[seg]["cls"] != t["cls"]:
            fail(f"tensor {name}: part {part} is in a segment of class {segs[seg]['cls']}")
        wdt, wn = want[part]
        if part == "data":
            wdt, wn = dt, numel * ARTIFACT_DTYPES[dt].itemsize
        if dt != wdt or n != wn:
            fail(f"tensor {name}: part {part} has {n} bytes of {dt}, expected {wn} bytes of {wdt} "
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
    """Compressed bytes per tensor class in the file on disk, plus "header"; sums to its size."""
    info = read_artifact_info(path)
    out = {c: 0 for c in TENSOR_CLASSES}
    for s in info.header["segments"]:
        out[s["cls"]] += s["comp"]
    out["header"] = info.body_offset
    return out


def load_artifact(path: str, max_decompressed_bytes: int = ARTIFACT_MAX_DECOMPRESSED) -> QuantizedModel:
    """Read and validate an artifact; any problem raises ``ArtifactError`` naming the file."""

    def fail(msg: str):
        raise ArtifactError(f"{path}: {msg}")

    data, info = _read_artifact_checked(path, max_decompressed_bytes)
    segs = info.header["segments"]
    pos = info.body_offset
    raws = []
    for s in segs:
        raws.append(_codec_decompress(info.codec, data[pos : pos + s["comp"]], s["raw"], fail))
        pos += s["comp"]
    tensors: dict[str, QTensor] = {}
    for t in info.header["tensors"]:
        parts = {}
        for part, dt, seg, off, n in t["parts"]:
            dtype = ARTIFACT_DTYPES[dt]
            raw = byte_unshuffle(raws[seg][off : off + n], dtype.itemsize)
            parts[part] = torch.frombuffer(bytearray(raw), dtype=dtype) if n else torch.empty(0, dtype=dtype)
        shape = tuple(t["shape"])
        if t["kind"] == "int":
            q = parts["q"].reshape(shape)
            qmax = 2 ** (t["bits"] - 1) - 1
            if q.numel() and int(q.to(torch.int16).abs().max()) > qmax:
                fail(f"tensor {t['name']}: values outside [-{qmax}, {qmax}] for int{t['bits']}")
            tensors[t["name"]] = QTensor(t["name"], t["cls"], "int", shape, ARTIFACT_DTYPES[t["dtype"]],
                                         bits=t["bits"], q=q, scale=parts["scale"],
                                         method=str(t.get("method", "")),
                                         clip_sigmas=float(t.get("clip_sigmas", 0.0)))
        else:
            tensors[t["name"]] = QTensor(t["name"], t["cls"], "raw", shape, ARTIFACT_DTYPES[t["dtype"]],
                                         data=parts["data"].reshape(shape))
    return QuantizedModel(tensors=tensors, aliases=dict(info.header.get("aliases", {})),
                          meta=dict(info.header.get("meta", {})))
