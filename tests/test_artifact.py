"""trainer/artifact.py and trainer/accounting.py: the file format, its refusals, byte accounting
and fitting under the limit."""

from __future__ import annotations

import copy
import json
import os
import struct
import zlib

import brotli
import pytest
import torch
import zstandard
from conftest_quant import TinyGPT, qconfig, synthetic_batch, train_tiny

from trainer.accounting import LimitError, account_bytes, counted_code_path, fit_to_limit
from trainer.artifact import (
    ARTIFACT_CODEC_IDS,
    ARTIFACT_FIXED_BYTES,
    ARTIFACT_MAGIC,
    ArtifactError,
    artifact_bytes_by_class,
    bytes_by_class,
    encode_artifact,
    load_artifact,
    read_artifact_info,
    save_artifact,
    write_artifact,
)
from trainer.quant import QTensor, QuantizedModel, collect_hessians, dequantize_into, quantize_model


@pytest.fixture(scope="module")
def setup():
    model = train_tiny(steps=60)
    batches = [synthetic_batch(torch.Generator().manual_seed(100 + i)) for i in range(4)]  # training data
    hess = collect_hessians(model, batches)
    qm = quantize_model(qconfig(fp16_tensors="blocks.1.attn.c_k"), model, hess)
    return model, hess, qm


def assert_same_qm(a: QuantizedModel, b: QuantizedModel) -> None:
    assert list(a.tensors) == list(b.tensors) and a.aliases == b.aliases and a.meta == b.meta
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert (t.cls, t.kind, t.shape, t.dtype, t.bits, t.method) == (u.cls, u.kind, u.shape, u.dtype,
                                                                        u.bits, u.method)
        for f in ("q", "scale", "data"):
            x, y = getattr(t, f), getattr(u, f)
            assert (x is None) == (y is None) and (x is None or (x.dtype == y.dtype and torch.equal(x, y)))


@pytest.mark.parametrize("codec", ["brotli", "zstd", "auto", "none"])
def test_round_trip_gives_bit_identical_logits(setup, tmp_path, codec):
    model, _, qm = setup
    path = tmp_path / "m.ptz"
    n = save_artifact(str(path), qm, codec)
    assert n == path.stat().st_size
    loaded = load_artifact(str(path))
    assert_same_qm(qm, loaded)
    in_process = copy.deepcopy(model)
    dequantize_into(in_process, qm)
    fresh = TinyGPT()  # a new model, as EVAL_ONLY=1 builds it
    dequantize_into(fresh, loaded)
    x, _ = synthetic_batch(torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(in_process(x), fresh(x))
    info = read_artifact_info(str(path))
    if codec == "auto":
        sizes = {c: len(encode_artifact(qm, c).blob) for c in ("brotli", "zstd")}
        assert info.codec == min(sizes, key=lambda c: (sizes[c], c != "brotli")) and n == min(sizes.values())
    else:
        assert info.codec == codec


def test_encoding_is_deterministic_and_compresses(setup):
    _, _, qm = setup
    a, b = encode_artifact(qm, "brotli"), encode_artifact(qm, "brotli")
    assert a.blob == b.blob and a.codec == "brotli"
    assert len(a.blob) < encode_artifact(qm, "none").raw_bytes


def test_byte_accounting_equals_file_sizes(setup, tmp_path, monkeypatch):
    _, _, qm = setup
    code = tmp_path / "train_gpt.py"
    code.write_text("print('hi')\n" * 37)
    art = tmp_path / "final.ptz"
    save_artifact(str(art), qm, "brotli")
    acc = account_bytes(str(code), str(art), limit_bytes=16_000_000)
    assert acc.code_bytes == os.path.getsize(code) and acc.model_bytes == os.path.getsize(art)
    assert acc.total_bytes == acc.code_bytes + acc.model_bytes
    assert acc.headroom_bytes == 16_000_000 - acc.total_bytes
    assert acc.lines("brotli")[1] == f"Serialized model quantized+brotli: {os.path.getsize(art)} bytes"
    per_class = artifact_bytes_by_class(str(art))
    assert sum(per_class.values()) == os.path.getsize(art)
    assert per_class == bytes_by_class(qm, "brotli")
    assert all(per_class[c] > 0 for c in ("attn", "mlp", "embed", "small", "header"))
    raw = bytes_by_class(qm)
    assert sum(raw.values()) == read_artifact_info(str(art)).raw_bytes
    monkeypatch.setenv("CODE_PATH", str(code))
    assert counted_code_path() == str(code)


def test_write_is_atomic(setup, tmp_path, monkeypatch):
    _, _, qm = setup
    path = tmp_path / "m.ptz"
    path.write_bytes(b"old")

    def broken_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_artifact(str(path), qm, "none")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.ptz"]


# --- refusals -------------------------------------------------------------------------------


def build_file(header: dict, segments: list[bytes], codec: str = "brotli", raw_len: int | None = None,
               version: int = 2, magic: bytes = ARTIFACT_MAGIC, header_raw_len: int | None = None) -> bytes:
    """An artifact assembled by hand, with a valid checksum (to reach the later checks)."""
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h = brotli.compress(hjson) if codec == "brotli" else zstandard.ZstdCompressor().compress(hjson)
    raw_len = sum(s["raw"] for s in header["segments"]) if raw_len is None else raw_len
    hraw = len(hjson) if header_raw_len is None else header_raw_len
    body = h + b"".join(segments)
    codec_id = ARTIFACT_CODEC_IDS.get(codec, 9)
    fixed = struct.pack("<8sHBBIIQ", magic, version, codec_id, 0, len(h), hraw, raw_len)
    crc = zlib.crc32(body, zlib.crc32(fixed))
    return fixed + struct.pack("<I", crc) + body


def split(blob: bytes) -> tuple[dict, list[bytes]]:
    hlen = struct.unpack_from("<I", blob, 12)[0]
    header = json.loads(brotli.decompress(blob[ARTIFACT_FIXED_BYTES : ARTIFACT_FIXED_BYTES + hlen]))
    pos, segs = ARTIFACT_FIXED_BYTES + hlen, []
    for s in header["segments"]:
        segs.append(blob[pos : pos + s["comp"]])
        pos += s["comp"]
    return header, segs


def refused(tmp_path, data: bytes, match: str, **kw) -> str:
    path = tmp_path / "bad.ptz"
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as e:
        load_artifact(str(path), **kw)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and match in msg and "\n" not in msg, msg
    return msg


def test_refuses_corrupted_truncated_and_foreign_files(setup, tmp_path):
    _, _, qm = setup
    blob = encode_artifact(qm, "brotli").blob
    flipped = bytearray(blob)
    flipped[len(blob) - 100] ^= 0x10  # inside the compressed payload
    refused(tmp_path, bytes(flipped), "checksum mismatch")
    flipped = bytearray(blob)
    flipped[ARTIFACT_FIXED_BYTES + 5] ^= 0x01  # inside the JSON header
    refused(tmp_path, bytes(flipped), "checksum mismatch")
    refused(tmp_path, blob[:-10], "checksum mismatch")
    refused(tmp_path, blob[:20], "truncated")
    refused(tmp_path, blob[: ARTIFACT_FIXED_BYTES + 10], "truncated or corrupted")
    refused(tmp_path, b"PK\x03\x04" + blob[4:], "wrong magic")
    refused(tmp_path, b"\x80\x02}q\x00(X" * 20, "wrong magic")  # a pickle is not an artifact
    refused(tmp_path, b"", "empty file")
    header, segs = split(blob)
    refused(tmp_path, build_file(header, segs, version=3), "unsupported format version 3")
    refused(tmp_path, build_file(header, segs, codec="lz4"), "unknown codec id 9")
    with pytest.raises(ArtifactError, match="cannot read artifact"):
        load_artifact(str(tmp_path / "missing.ptz"))


def test_refuses_oversized_declarations_before_decompressing(setup, tmp_path):
    _, _, qm = setup
    blob = encode_artifact(qm, "brotli").blob
    header, segs = split(blob)
    refused(tmp_path, build_file(header, segs, raw_len=1 << 40), "declares 1099511627776 decompressed bytes")
    refused(tmp_path, build_file(header, segs, header_raw_len=1 << 31), "declares a 2147483648-byte header")
    refused(tmp_path, build_file(header, segs, header_raw_len=10), "decompresses to more bytes, declared 10")
    refused(tmp_path, blob, "over the limit of 1000", max_decompressed_bytes=1000)


@pytest.mark.parametrize("codec", ["brotli", "zstd"])
def test_refuses_a_stream_longer_than_declared(tmp_path, codec):
    """A decompression bomb with an honest-looking header: stopped at the declared size."""
    bomb = bytes(50 << 20)
    if codec == "brotli":
        comp = brotli.compress(bomb, quality=5)
    else:
        comp = zstandard.ZstdCompressor(level=3).compress(bomb)
    tensor = {"name": "x", "cls": "small", "kind": "raw", "shape": [100], "dtype": "uint8", "bits": 0,
              "method": "", "clip_sigmas": 0.0, "parts": [["data", "uint8", 0, 0, 100]]}
    seg = {"cls": "small", "codec": codec, "raw": 100, "comp": len(comp)}
    header = {"format": "pgolf-qmodel", "segments": [seg],
              "tensors": [tensor], "aliases": {}, "meta": {}}
    refused(tmp_path, build_file(header, [comp], codec=codec), "decompresses to more bytes, declared 100")


def test_refuses_headers_inconsistent_with_the_payload(setup, tmp_path):
    _, _, qm = setup
    header, segs = split(encode_artifact(qm, "brotli").blob)

    def variant(edit) -> bytes:
        h = copy.deepcopy(header)
        edit(h)
        return build_file(h, segs)

    t0 = next(i for i, t in enumerate(header["tensors"]) if t["kind"] == "int")
    refused(tmp_path, variant(lambda h: h["tensors"][t0].__setitem__("shape", [3, 3])), "expected")
    refused(tmp_path, variant(lambda h: h["tensors"].pop()), "do not tile")
    refused(tmp_path, variant(lambda h: h["segments"][0].__setitem__("comp", 5)), "compressed bytes")
    refused(tmp_path, variant(lambda h: h["tensors"][t0].__setitem__("dtype", "object")), "unknown dtype")
    refused(tmp_path, variant(lambda h: h.__setitem__("format", "other")), "not a pgolf-qmodel header")
    refused(tmp_path, variant(lambda h: h["aliases"].__setitem__("a", "nope")), "alias")
    # a valid layout whose values do not fit the declared bits
    refused(tmp_path, variant(lambda h: h["tensors"][t0].__setitem__("bits", 2)), "values outside [-1, 1]")


def test_aliases_round_trip(tmp_path):
    w = torch.randn(4, 4)
    qm = QuantizedModel({"a.weight": QTensor("a.weight", "small", "raw", (4, 4), torch.float32,
                                             data=w.half())}, aliases={"b.weight": "a.weight"}, meta={"x": 1})
    save_artifact(str(tmp_path / "a.ptz"), qm, "zstd")
    back = load_artifact(str(tmp_path / "a.ptz"))
    assert back.aliases == {"b.weight": "a.weight"} and torch.equal(back.tensors["a.weight"].data, w.half())


# --- fitting under the limit ----------------------------------------------------------------


def test_fit_to_limit_prunes_until_it_fits(setup, tmp_path):
    _, hess, qm0 = setup
    qm = copy.deepcopy(qm0)
    base = len(encode_artifact(qm, "brotli").blob)
    code = 5_000
    same = fit_to_limit(copy.deepcopy(qm0), hess, code_bytes=code, limit_bytes=code + base, codec="brotli")
    assert same.pruned_values == 0 and same.account.headroom_bytes == 0
    limit = code + base - 2_500
    logs: list[str] = []
    fit = fit_to_limit(qm, hess, code_bytes=code, limit_bytes=limit, codec="brotli", log=logs.append)
    assert fit.pruned_values > 0 and logs and qm.meta["pruned_values"] == fit.pruned_values
    assert fit.account.total_bytes <= limit and fit.account.total_bytes == code + len(fit.encoded.blob)
    assert same.unpruned_bytes == fit.unpruned_bytes == base  # the model as quantized, before pruning
    path = tmp_path / "fit.ptz"
    assert write_artifact(str(path), fit.encoded.blob) == fit.account.model_bytes
    zeros = lambda m: sum(int((t.q == 0).sum()) for t in m.tensors.values() if t.kind == "int")  # noqa: E731
    assert zeros(load_artifact(str(path))) == zeros(qm0) + fit.pruned_values


def test_fit_to_limit_without_search_rounds_still_fits(setup):
    _, hess, qm0 = setup
    base = len(encode_artifact(qm0, "zstd").blob)
    fit = fit_to_limit(copy.deepcopy(qm0), hess, code_bytes=0, limit_bytes=base - 3_000, codec="zstd",
                       max_rounds=0)
    assert fit.pruned_values > 0 and fit.account.total_bytes <= base - 3_000 and fit.codec == "zstd"


def test_fit_to_limit_raises_when_impossible(setup):
    _, hess, qm0 = setup
    with pytest.raises(LimitError, match="cannot fit: even with all .* pruned"):
        fit_to_limit(copy.deepcopy(qm0), hess, code_bytes=5_000, limit_bytes=10_000, codec="brotli")
