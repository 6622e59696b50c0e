"""pgolf data's download against a local HTTP server on 127.0.0.1 that mimics the Hugging Face Hub:
``/datasets/{repo}/resolve/{revision}/{path}``, LFS files answered with a 302 to a CDN path carrying
``X-Linked-Etag`` (sha256) and ``X-Linked-Size``, small files with a git-blob-sha1 ``ETag``, and Range
requests. Covers a full download, resume after a cut-off, a checksum mismatch, a 404 and a full disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pgolf.cli import main as cli
from pgolf.shards import write_shard

REPO_ID = "someone/parameter-golf"
VARIANT_DIR = "fineweb10B_sp1024"


class HubHandler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        hub = self.server.hub
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        m = re.match(rf"^/datasets/{re.escape(REPO_ID)}/resolve/main/(.+)$", self.path)
        cdn = re.match(r"^/cdn/(.+)$", self.path)
        rel = (m or cdn).group(1) if (m or cdn) else None
        path = hub.root / rel if rel else None
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        lfs = not rel.endswith(".json")
        if m and lfs:  # the Hub redirects LFS files to its CDN; the checksum rides on the redirect
            self.send_response(302)
            self.send_header("Location", f"/cdn/{rel}")
            sha = hub.sha_override.get(rel, hashlib.sha256(data).hexdigest())
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and hub.ranges:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if not lfs:
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            self.send_header("ETag", f'"{blob}"')
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        cut = hub.cut_after.pop(rel, None) if not rng else None
        if cut is not None:  # the connection drops mid-file
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class Hub:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_after: dict[str, int] = {}
        self.sha_override: dict[str, str] = {}
        self.ranges = True


@pytest.fixture
def hub(tmp_path):
    """The remote repo's tree under datasets/ (the challenge script's root prefix), served locally."""
    root = tmp_path / "remote" / "datasets"
    ds = root / "datasets" / VARIANT_DIR
    rng = np.random.default_rng(0)
    for name, n in (("fineweb_val_000000.bin", 40_000), ("fineweb_train_000000.bin", 60_000),
                    ("fineweb_train_000001.bin", 60_000), ("fineweb_train_000002.bin", 60_000)):
        write_shard(ds / name, rng.integers(0, 1024, n).astype(np.uint16))
    (root / "tokenizers").mkdir(parents=True)
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(rng.bytes(5000))
    (root / "tokenizers" / "fineweb_1024_bpe.vocab").write_text("<unk>\t0\n")
    manifest = {"datasets": [{"name": VARIANT_DIR, "tokenizer_name": "sp_bpe_1024",
                              "stats": {"files_train": 3, "files_val": 1}}],
                "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    h = Hub(root.parent)
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.hub = h
    # resolve paths are relative to the repo root: serve remote/ (so datasets/... is the prefix)
    h.root = root.parent
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    h.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield h
    server.shutdown()
    server.server_close()


def run(capsys, hub, out, *extra) -> tuple[int, str, str]:
    rc = cli(["data", "--variant", "sp1024", "--repo", REPO_ID, "--endpoint", hub.endpoint, "--out", str(out),
              "--no-progress", *extra])
    o = capsys.readouterr()
    return rc, o.out, o.err


def remote(hub, rel: str) -> bytes:
    return (hub.root / "datasets" / rel).read_bytes()


def test_full_download_matches_the_remote_and_checks_every_file(tmp_path, capsys, hub):
    out = tmp_path / "data"
    rc, stdout, err = run(capsys, hub, out, "--train-shards", "2")
    assert rc == 0, err
    files = ["datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
             "datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
             "datasets/fineweb10B_sp1024/fineweb_train_000001.bin", "tokenizers/fineweb_1024_bpe.model",
             "tokenizers/fineweb_1024_bpe.vocab", "manifest.json"]
    for rel in files:
        assert (out / rel).read_bytes() == remote(hub, rel), rel
    assert not (out / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin").exists()  # only --train-shards 2
    assert not list(out.rglob("*.part"))
    assert stdout.count("sha256 ok") == 5  # LFS files: X-Linked-Etag
    assert "train_000000.bin: 121024 bytes, sha256 ok" in stdout
    assert "manifest: fineweb10B_sp1024 has 3 train / 1 val shards" in stdout
    assert f"DATA_PATH={out}/datasets/fineweb10B_sp1024" in stdout
    # a second run keeps what is there and fetches nothing but the manifest
    n = len(hub.requests)
    rc, stdout, _ = run(capsys, hub, out, "--train-shards", "2")
    assert rc == 0 and stdout.count("already present, kept") == 5
    assert {p for _, p, _ in hub.requests[n:]} == {f"/datasets/{REPO_ID}/resolve/main/datasets/manifest.json"}
    # more train shards than the manifest lists is refused up front
    rc, _, err = run(capsys, hub, out, "--train-shards", "4")
    assert rc == 1 and "--train-shards 4: fineweb10B_sp1024 has only 3 train shards" in err


def test_resume_after_a_cut_off(tmp_path, capsys, hub):
    out = tmp_path / "data"
    rel = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    hub.cut_after["datasets/" + rel] = 30_000
    rc, _, err = run(capsys, hub, out, "--train-shards", "0", "--retries", "0")
    assert rc == 1 and err.count("\n") == 1
    assert "download interrupted" in err and "run again to resume" in err
    part = out / (rel + ".part")
    assert part.stat().st_size == 30_000 and not (out / rel).exists()
    rc, stdout, err = run(capsys, hub, out, "--train-shards", "0")
    assert rc == 0, err
    assert (out / rel).read_bytes() == remote(hub, rel) and not part.exists()
    ranged = [r for m, p, r in hub.requests if m == "GET" and p.endswith(rel) and r]
    assert ranged == ["bytes=30000-"]  # resumed where it stopped, not from zero
    # with retries, a cut-off inside one run resumes by itself
    out2 = tmp_path / "data2"
    hub.cut_after["datasets/" + rel] = 12_345
    rc, _, err = run(capsys, hub, out2, "--train-shards", "0")
    assert rc == 0, err
    assert (out2 / rel).read_bytes() == remote(hub, rel)
    assert [r for m, p, r in hub.requests if m == "GET" and p.endswith(rel) and r][-1] == "bytes=12345-"


def test_a_stale_part_file_that_fails_the_checksum_is_fetched_again(tmp_path, capsys, hub):
    out = tmp_path / "data"
    rel = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    (out / rel).parent.mkdir(parents=True)
    (out / (rel + ".part")).write_bytes(b"\x07" * 5000)  # e.g. left over from another revision
    rc, _, err = run(capsys, hub, out, "--train-shards", "0")
    assert rc == 0, err
    assert (out / rel).read_bytes() == remote(hub, rel)
    gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith(rel)]
    assert gets == ["bytes=5000-", None]  # resumed, failed the sha256, fetched whole


def test_server_without_range_support_restarts_cleanly(tmp_path, capsys, hub):
    out = tmp_path / "data"
    rel = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    hub.cut_after["datasets/" + rel] = 1000
    assert run(capsys, hub, out, "--train-shards", "0", "--retries", "0")[0] == 1
    hub.ranges = False  # answers 200 with the whole file: the .part must be rewritten, not appended to
    rc, _, err = run(capsys, hub, out, "--train-shards", "0")
    assert rc == 0, err
    assert (out / rel).read_bytes() == remote(hub, rel)


def test_checksum_mismatch_is_an_error_and_the_bad_file_is_removed(tmp_path, capsys, hub):
    out = tmp_path / "data"
    rel = "datasets/fineweb10B_sp1024/fineweb_train_000000.bin"
    hub.sha_override["datasets/" + rel] = "0" * 64
    rc, _, err = run(capsys, hub, out, "--train-shards", "1")
    assert rc == 1 and err.count("\n") == 1
    assert f"{out / rel}: sha256 mismatch (expected {'0' * 64}" in err and "removed" in err
    assert not (out / rel).exists() and not (out / (rel + ".part")).exists()
    assert (out / "datasets/fineweb10B_sp1024/fineweb_val_000000.bin").exists()  # earlier files kept
    # a checksums file (sha256sum format) is checked too, and wins over the server's headers
    hub.sha_override.clear()
    val = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    (out / val).unlink()
    sums = tmp_path / "sums.txt"
    sums.write_text(f"{'a' * 64}  {val}\n")
    rc, _, err = run(capsys, hub, out, "--train-shards", "0", "--checksums", str(sums))
    assert rc == 1 and f"{out / val}: sha256 mismatch (expected {'a' * 64}" in err
    assert not (out / val).exists()
    sums.write_text(f"{hashlib.sha256(remote(hub, val)).hexdigest()}  {val}\n")
    assert run(capsys, hub, out, "--train-shards", "0", "--checksums", str(sums))[0] == 0


def test_missing_file_is_a_clear_404(tmp_path, capsys, hub):
    out = tmp_path / "data"
    (hub.root / "datasets/tokenizers/fineweb_1024_bpe.vocab").unlink()
    rc, _, err = run(capsys, hub, out, "--train-shards", "1")
    assert rc == 1 and err.count("\n") == 1
    assert "tokenizers/fineweb_1024_bpe.vocab: not found (HTTP 404)" in err and f"--repo {REPO_ID}" in err
    # a wrong repo: even the manifest is missing, and the first shard 404s
    rc = cli(["data", "--variant", "sp1024", "--repo", "nobody/nothing", "--endpoint", hub.endpoint,
              "--out", str(tmp_path / "d2"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "not found (HTTP 404)" in err and "--repo nobody/nothing" in err


def test_hf_endpoint_env_and_manifestless_layout(tmp_path, capsys, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", REPO_ID)
    (hub.root / "datasets/manifest.json").unlink()
    out = tmp_path / "data"
    rc = cli(["data", "--variant", "sp1024", "--out", str(out), "--train-shards", "1", "--no-progress"])
    o = capsys.readouterr()
    assert rc == 0, o.err
    assert "no manifest.json; assuming 1 val shard and tokenizers/fineweb_1024_bpe.model" in o.out
    assert (out / "tokenizers/fineweb_1024_bpe.model").is_file()
    assert (out / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_while_downloading_is_one_line(tmp_path, capsys, hub):
    """/dev/full fails every write with ENOSPC: the partial file is a link to it."""
    out = tmp_path / "data"
    rel = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    (out / rel).parent.mkdir(parents=True)
    os.symlink("/dev/full", out / (rel + ".part"))
    rc, _, err = run(capsys, hub, out, "--train-shards", "0")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {out / rel}.part: no space left on device")
    assert "run again to resume" in err
    assert not (out / rel).exists()
