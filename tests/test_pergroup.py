"""Per-group compression (trainer/pergroup.py and COMPRESSOR=pergroup in trainer/artifact.py): the
row order, the column-major layout, round trips with lrzip and with the brotli fallback, and one
clear line when lrzip is missing or a stream is bad."""

from __future__ import annotations

import copy
import json
import os
import struct
import tempfile

import brotli
import pytest
import torch
from conftest_quant import TinyGPT, qconfig, rebuild_artifact, synthetic_batch, train_tiny

from trainer.artifact import ArtifactError, encode_artifact, load_artifact, read_artifact_info
from trainer.pergroup import (
    CodecError,
    column_major_bytes,
    lrzip_binary,
    lrzip_compress,
    lrzip_decompress,
    q_from_column_major,
    similarity_order,
    weight_role,
)
from trainer.quant import QTensor, collect_hessians, dequantize_into, quantize_model

needs_lrzip = pytest.mark.skipif(lrzip_binary() is None, reason="the lrzip binary is not installed "
                                 "(apt-get install lrzip)")


@pytest.fixture(scope="module")
def setup():
    model = train_tiny(steps=5, gates=True)  # round trips need weights, not good ones
    batches = [synthetic_batch(torch.Generator().manual_seed(100 + i)) for i in range(4)]  # training data
    hess = collect_hessians(model, batches)
    qm = quantize_model(qconfig(gate_bits=8, lqer_rank=2, lqer_top_k=2, lqer_group=16), model, hess)
    return model, qm


def same_logits(model, qm, back) -> bool:
    m1, m2 = copy.deepcopy(model), TinyGPT(gates=True)
    dequantize_into(m1, qm)
    dequantize_into(m2, back)
    x, _ = synthetic_batch(torch.Generator().manual_seed(5))
    with torch.no_grad():
        return torch.equal(m1(x), m2(x))


def assert_same_ints(qm, back) -> None:
    for n, t in qm.tensors.items():
        u = back.tensors[n]
        for f in ("q", "scale", "data", "lqer_a", "lqer_b"):
            a, b = getattr(t, f), getattr(u, f)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), (n, f)


def test_similarity_order_is_greedy_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (40, 16), generator=g, dtype=torch.int8)
    q[7] = q[0]  # an exact neighbour of the first row comes right after it
    order = similarity_order(q).tolist()
    assert sorted(order) == list(range(40)) and order[:2] == [0, 7]
    used = {0}
    for prev, nxt in zip(order, order[1:]):
        d = {j: int((q[j].int() - q[prev].int()).abs().sum()) for j in range(40) if j not in used}
        assert d[nxt] == min(d.values())
        used.add(nxt)


@pytest.mark.parametrize("sort", [False, True])
def test_column_major_layout_round_trips(sort):
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-31, 32, (24, 10), generator=g, dtype=torch.int8)
    t = QTensor("blocks.0.mlp.fc.weight", "mlp", "int", (24, 10), torch.float32, bits=6, q=q,
                scale=torch.ones(24, dtype=torch.float16))
    raw, perm = column_major_bytes(t, sort)
    assert len(raw) == q.numel() and (perm is None) == (not sort)
    stored = q[perm] if sort else q
    assert raw[:24] == stored[:, 0].numpy().tobytes()  # the first column comes first
    back = q_from_column_major(raw, 24, 10, None if perm is None else perm.numpy())
    assert torch.equal(back, q)
    assert weight_role("blocks.10.attn.c_q.weight") == "attn.c_q.weight"
    assert weight_role("tok_emb.weight") == "tok_emb.weight"


def test_pergroup_brotli_fallback_round_trips(setup, tmp_path):
    model, qm = setup
    enc = encode_artifact(qm, "pergroup", stream_codec="brotli")
    assert enc.blob == encode_artifact(qm, "pergroup", stream_codec="brotli").blob  # deterministic
    path = tmp_path / "pg.ptz"
    path.write_bytes(enc.blob)
    info = read_artifact_info(str(path))
    assert info.codec == "pergroup" and info.version == 2
    groups = {s["group"]: s for s in info.header["segments"]}
    assert {"q:mlp.fc.weight", "q:attn.c_q.weight", "q:tok_emb.weight", "gate", "lqer"} <= set(groups)
    assert all(s["codec"] == "brotli" for s in info.header["segments"])
    tens = {t["name"]: t for t in info.header["tensors"]}
    fc = tens["blocks.0.mlp.fc.weight"]
    assert fc["q_layout"] == "cols" and any(p[0] == "perm" for p in fc["parts"])  # a sorted role
    ck = tens["blocks.0.attn.c_k.weight"]
    assert ck["q_layout"] == "cols" and not any(p[0] == "perm" for p in ck["parts"])
    gate = tens["blocks.0.attn.out_gate.weight"]
    assert gate["cls"] == "gate" and gate["q_layout"] == "rows" and gate["bits"] == 8
    back = load_artifact(str(path))
    assert_same_ints(qm, back)
    assert same_logits(model, qm, back)
    assert enc.group_bytes["q:mlp.fc.weight[brotli]"] > 0 and sum(enc.class_bytes.values()) == len(enc.blob)


@needs_lrzip
def test_pergroup_lrzip_round_trips(setup, tmp_path):
    model, qm = setup
    enc = encode_artifact(qm, "pergroup")  # lrzip is on PATH: the default stream codec
    assert enc.blob == encode_artifact(qm, "pergroup", stream_codec="lrzip").blob
    path = tmp_path / "pg.ptz"
    path.write_bytes(enc.blob)
    codecs = {s["group"]: s["codec"] for s in read_artifact_info(str(path)).header["segments"]}
    assert codecs["q:mlp.fc.weight"] == "lrzip" and codecs["lqer"] == "brotli"
    back = load_artifact(str(path))
    assert_same_ints(qm, back)
    assert same_logits(model, qm, back)


@needs_lrzip
def test_an_lrzip_artifact_without_the_binary_fails_in_one_line(setup, tmp_path, monkeypatch):
    _, qm = setup
    path = tmp_path / "pg.ptz"
    path.write_bytes(encode_artifact(qm, "pergroup", stream_codec="lrzip").blob)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # an eval machine without lrzip
    with pytest.raises(ArtifactError) as e:
        load_artifact(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "lrzip binary is not on PATH" in msg and "\n" not in msg
    with pytest.raises(CodecError, match="install the Debian package lrzip"):
        lrzip_compress(b"abc")


@needs_lrzip
def test_bad_lrzip_streams_fail_in_one_line(setup, tmp_path, monkeypatch):
    _, qm = setup
    # a private temp root: other tests running in parallel make their own pgolf-lr* dirs
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    blob = encode_artifact(qm, "pergroup", stream_codec="lrzip").blob
    path = tmp_path / "bad.ptz"
    before = set(os.listdir(tempfile.gettempdir()))

    def refused(data: bytes, match: str) -> None:
        path.write_bytes(data)
        with pytest.raises(ArtifactError) as e:
            load_artifact(str(path))
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and match in msg and "\n" not in msg, msg

    lrz = [i for i, s in enumerate(read_info(blob)["segments"]) if s["codec"] == "lrzip"]

    def flip(i, comp):  # damage the compressed data, keep its lrzip header
        if i != lrz[0]:
            return comp
        b = bytearray(comp)
        b[len(b) // 2] ^= 0xFF
        return bytes(b)

    refused(rebuild_artifact(blob, edit_comp=flip), "lrzip")

    def resize(i, comp):  # the stream's own header declares another size than ours
        if i != lrz[0]:
            return comp
        return comp[:6] + (int.from_bytes(comp[6:14], "little") + 1).to_bytes(8, "little") + comp[14:]

    refused(rebuild_artifact(blob, edit_comp=resize), "lrzip stream declares")
    after = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("pgolf-lr")}
    assert not after  # temporary directories are removed, failures included
    with pytest.raises(CodecError, match="bad magic"):
        lrzip_decompress(b"not lrzip at all", 3)


def read_info(blob: bytes) -> dict:
    """The JSON header of a brotli-headed artifact."""
    hlen = struct.unpack_from("<I", blob, 12)[0]
    return json.loads(brotli.decompress(blob[32 : 32 + hlen]))


def test_pergroup_refuses_a_bad_permutation(setup, tmp_path):
    _, qm = setup
    blob = encode_artifact(qm, "pergroup", stream_codec="brotli").blob
    header = read_info(blob)
    fc = next(t for t in header["tensors"] if t["name"] == "blocks.0.mlp.fc.weight")
    part, _dt, seg, off, n = next(p for p in fc["parts"] if p[0] == "perm")

    def dup(i, raw):  # every stored row index's low byte -> 0: rows repeat
        if i != seg:
            return raw
        b = bytearray(raw)
        b[off : off + n // 2] = bytes(n // 2)
        return bytes(b)

    path = tmp_path / "perm.ptz"
    path.write_bytes(rebuild_artifact(blob, edit_raw=dup))
    with pytest.raises(ArtifactError, match="not a permutation"):
        load_artifact(str(path))


def test_lrzip_gets_the_library_path(tmp_path, monkeypatch):
    """An lrzip unpacked outside the system folders (as on the lent GPU machines) finds its shared
    libraries: LD_LIBRARY_PATH reaches the child, whose environment is otherwise minimal."""
    seen = tmp_path / "seen.txt"
    fake = tmp_path / "bin" / "lrzip"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$LD_LIBRARY_PATH" > {seen}\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lrz/lib")
    with pytest.raises(CodecError, match="status 3"):
        lrzip_compress(b"x" * 100)
    assert seen.read_text().strip() == "/opt/lrz/lib"
