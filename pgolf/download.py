"""Download the challenge's FineWeb shards and tokenizer from a Hugging Face dataset repo.

Plain HTTP(S), no huggingface_hub: ``{endpoint}/datasets/{repo}/resolve/{revision}/{path}``, with
the endpoint from ``HF_ENDPOINT`` (default https://huggingface.co) as huggingface_hub does, and
``HF_TOKEN`` sent as a bearer token to that host when set.

Assumed remote layout (this machine cannot reach Hugging Face; taken from the challenge's
``data/cached_challenge_fineweb.py`` and the records' READMEs, e.g. "MATCHED_FINEWEB_REPO_ID=
kevclark/parameter-golf python3 data/cached_challenge_fineweb.py --variant sp8192 --train-shards
128"). Every part is configurable (flags, or the challenge script's environment variables):

- repo: ``MATCHED_FINEWEB_REPO_ID`` / ``--repo``; default ``kevclark/parameter-golf`` for sp8192
  (the records' source of SP8192 data), ``willdepueoai/parameter-golf`` for sp1024 (the
  challenge's default, as its ``cached_challenge_fineweb.py`` has it) and
  ``romeerp/parameter-golf-caseops-v1`` for the prepared CaseOps data (``sp8192_caseops
  --prebuilt``, PR #1729's export that the 1.0611 record trained on); revision ``main``
  (``--revision``).
- root prefix in the repo: ``MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`` / ``--remote-prefix``, default
  ``datasets``; under it ``manifest.json``, ``datasets/fineweb10B_{variant}/fineweb_{train,val}_
  NNNNNN.bin`` and ``tokenizers/...``. They land in ``ROOT/manifest.json``, ``ROOT/datasets/...``
  and ``ROOT/tokenizers/...`` (ROOT = ``--out``, default ``./data``), the challenge's local layout.
- ``manifest.json`` lists ``datasets`` (``name``, ``tokenizer_name``, ``stats.files_train``,
  ``stats.files_val``) and ``tokenizers`` (``name``, ``model_path``/``vocab_path``/``path``). When it
  is missing or lacks the variant, one val shard and ``tokenizers/fineweb_{V}_bpe.model`` are assumed.
- CaseOps (``sp8192_caseops``): dataset ``fineweb10B_sp8192_lossless_caps_caseops_v1_reserved``,
  tokenizer ``tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model`` (checked
  against the record's sha256, ``PINNED_SHA256``), and a byte sidecar
  ``fineweb_val_bytes_NNNNNN.bin`` per val shard. By default the shards are not downloaded but
  built here (pgolf/dataset.py ``build_from_jsonl``) from the challenge's raw documents,
  ``docs_selected.jsonl`` (+ ``docs_selected.source_manifest.json``, which gives the number of
  validation documents, 50,000) under the same root prefix of ``willdepueoai/parameter-golf``,
  saved as ``ROOT/docs_selected.jsonl`` (``download_docs``).

Integrity: each file is fetched to ``NAME.part`` (resumed with a Range request after a cut-off) and
renamed into place only after its size and checksum match. Sizes come from ``X-Linked-Size`` /
``Content-Length``; checksums from ``--checksums FILE`` (``sha256sum`` format or JSON
``{path: sha256}``, paths relative to ROOT) or from the Hub's headers on the un-redirected
response: ``X-Linked-Etag`` is the SHA-256 of an LFS file, a 40-hex ``ETag`` the git blob SHA-1 of
a small file. A file with a wrong checksum is deleted, never left in place. Shards are also checked
against their header's token count.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from pgolf.errors import PgolfError, os_error_message
from pgolf.fsutil import sha256_file

DEFAULT_ENDPOINT = "https://huggingface.co"
CASEOPS_REPO = "romeerp/parameter-golf-caseops-v1"
DOCS_REPO = "willdepueoai/parameter-golf"  # the challenge's raw documents
DEFAULT_REPOS = {"sp8192": "kevclark/parameter-golf", "sp1024": DOCS_REPO, "sp8192_caseops": CASEOPS_REPO}
VARIANTS = tuple(DEFAULT_REPOS)
CASEOPS_VARIANT = "sp8192_caseops"
DATASET_DIRS = {"sp8192_caseops": "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"}
TOKENIZER_FILES = {"sp8192_caseops": "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"}
# the 1.0611 record's CaseOps tokenizer (its records folder ships the same file)
PINNED_SHA256 = {TOKENIZER_FILES["sp8192_caseops"]:
                 "97754754561f20def5edd99765ca0668f880bd94e67316d54aa10ab25f45cc4d"}
DOCS_FILE = "docs_selected.jsonl"
DOCS_META_FILE = "docs_selected.source_manifest.json"
DEFAULT_VAL_DOCS = 50_000  # the challenge's validation split: the first 50,000 documents
DEFAULT_PREFIX = "datasets"
DEFAULT_TRAIN_SHARDS = 80  # the challenge script's default
CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Remote:
    endpoint: str
    repo: str
    revision: str = "main"
    prefix: str = DEFAULT_PREFIX
    token: str | None = None
    timeout: float = 60.0

    def url(self, path: str) -> str:
        """Resolve URL of ``path`` (relative to the root prefix)."""
        full = f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path
        return (f"{self.endpoint.rstrip('/')}/datasets/{self.repo}/resolve/"
                f"{urllib.parse.quote(self.revision, safe='')}/{urllib.parse.quote(full, safe='/')}")


@dataclass
class FileMeta:
    url: str  # where to GET (after the Hub's redirect, if any)
    size: int | None
    sha256: str | None
    git_sha1: str | None


@dataclass
class Plan:
    files: list[str]  # paths relative to the root prefix (and to the local ROOT)
    manifest_note: str


def remote_from_env(variant: str, repo: str | None = None, revision: str | None = None,
                    endpoint: str | None = None, prefix: str | None = None) -> Remote:
    """Flags win over the environment (HF_ENDPOINT, HF_TOKEN, MATCHED_FINEWEB_*) over defaults."""
    return Remote(
        endpoint=endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT,
        repo=repo or os.environ.get("MATCHED_FINEWEB_REPO_ID") or DEFAULT_REPOS[variant],
        revision=revision or "main",
        prefix=prefix if prefix is not None else os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX",
                                                                DEFAULT_PREFIX),
        token=os.environ.get("HF_TOKEN") or None,
    )


def vocab_of(variant: str) -> int:
    if variant not in VARIANTS:
        raise PgolfError(f"--variant {variant}: unknown (known: {', '.join(VARIANTS)})")
    return int(variant[2:].split("_")[0])


def dataset_dir_of(variant: str) -> str:
    """The dataset folder of a variant under ``datasets/``."""
    vocab_of(variant)
    return DATASET_DIRS.get(variant, f"fineweb10B_{variant}")


def tokenizer_file_of(variant: str) -> str:
    """The tokenizer path (relative to the root) assumed when no manifest names one."""
    return TOKENIZER_FILES.get(variant, f"tokenizers/fineweb_{vocab_of(variant)}_bpe.model")


def plan_files(manifest: dict | None, variant: str, train_shards: int) -> Plan:
    """The files to fetch: val shards (and their byte sidecars for CaseOps data), the first
    ``train_shards`` train shards, tokenizer files."""
    ds_name = dataset_dir_of(variant)
    sidecars = variant == CASEOPS_VARIANT
    entry = None
    if manifest is not None:
        entry = next((d for d in manifest.get("datasets", []) if d.get("name") == ds_name), None)
    if entry is None:
        note = ("no manifest.json" if manifest is None else f"manifest.json has no {ds_name}") + \
            f"; assuming 1 val shard and {tokenizer_file_of(variant)}"
        n_val, max_train, tok_files = 1, None, [tokenizer_file_of(variant)]
    else:
        sidecars = sidecars or bool(entry.get("val_bytes_glob"))
        stats = entry.get("stats") or {}
        n_val = int(stats.get("files_val", 1))
        max_train = int(stats["files_train"]) if "files_train" in stats else None
        tok_entry = next((t for t in manifest.get("tokenizers", [])
                          if t.get("name") == entry.get("tokenizer_name")), None)
        tok_files = [str(tok_entry[k]) for k in ("model_path", "vocab_path", "path")
                     if tok_entry and tok_entry.get(k)]
        if not tok_files:
            tok_files = [tokenizer_file_of(variant)]
        n_train = max_train if max_train is not None else "?"
        note = f"manifest: {ds_name} has {n_train} train / {n_val} val shards"
    if train_shards < 0:
        raise PgolfError(f"--train-shards must be >= 0, got {train_shards}")
    if max_train is not None and train_shards > max_train:
        raise PgolfError(f"--train-shards {train_shards}: {ds_name} has only {max_train} train shards")
    files = [f"datasets/{ds_name}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    if sidecars:
        files += [f"datasets/{ds_name}/fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)]
    files += [f"datasets/{ds_name}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    return Plan(files + tok_files, note)


def read_checksums(path: str) -> dict[str, str]:
    """``{relative path: sha256}`` from a sha256sum-style file or a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PgolfError(os_error_message(e, path)) from None
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise PgolfError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None
        out = {k: (v.get("sha256") if isinstance(v, dict) else v) for k, v in obj.items()}
    else:
        out = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise PgolfError(f"{path}:{n}: expected 'SHA256  PATH'")
            out[parts[1].strip().lstrip("*")] = parts[0]
    for k, v in out.items():
        if not isinstance(v, str) or not _HEX64.match(v.lower()):
            raise PgolfError(f"{path}: entry {k!r} is not a SHA-256 hex digest")
    return {k.lstrip("./"): v.lower() for k, v in out.items()}


# --- HTTP -------------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None  # surface the 3xx, whose headers carry the Hub's checksum


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)
_OPENER = urllib.request.build_opener()
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                   TimeoutError)


def _headers(remote: Remote, url: str, extra: dict | None = None) -> dict:
    h = {"User-Agent": "pgolf-data/1"}
    if remote.token and _host(url) == _host(remote.endpoint):
        h["Authorization"] = f"Bearer {remote.token}"  # never leaked to the CDN after a redirect
    h.update(extra or {})
    return h


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


class NetworkError(PgolfError):
    """The server could not be reached."""


class HTTPStatusError(PgolfError):
    """The server answered with an error status (``status``)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _http_error(url: str, code: int, rel: str, remote: Remote) -> PgolfError:
    if code == 404:
        return HTTPStatusError(f"{url}: not found (HTTP 404); check --repo {remote.repo}, --revision "
                          f"{remote.revision}, --variant and the path {rel}", code)
    if code in (401, 403):
        return HTTPStatusError(f"{url}: access denied (HTTP {code}); set HF_TOKEN if the repo is "
                               f"gated or private", code)
    return HTTPStatusError(f"{url}: HTTP {code}", code)


def _clean_etag(v: str | None) -> str | None:
    if not v:
        return None
    v = v.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower() or None


def head(remote: Remote, rel: str) -> FileMeta:
    """Metadata of ``rel`` from the un-redirected resolve response."""
    url = remote.url(rel)
    req = urllib.request.Request(url, method="HEAD", headers=_headers(remote, url,
                                                                      {"Accept-Encoding": "identity"}))
    try:
        with _NO_REDIRECT.open(req, timeout=remote.timeout) as r:
            status, hdrs, target = r.status, r.headers, url
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise _http_error(url, e.code, rel, remote) from None
        status, hdrs = e.code, e.headers
        target = urllib.parse.urljoin(url, hdrs.get("Location", ""))
    except _NETWORK_ERRORS as e:
        raise NetworkError(f"{url}: cannot connect ({_reason(e)})") from None
    linked = _clean_etag(hdrs.get("X-Linked-Etag"))
    etag = _clean_etag(hdrs.get("ETag"))
    sha256 = linked if linked and _HEX64.match(linked) else (etag if etag and _HEX64.match(etag) else None)
    git_sha1 = etag if etag and _HEX40.match(etag) and not linked else None
    size = _int(hdrs.get("X-Linked-Size"))
    if size is None and status == 200:
        size = _int(hdrs.get("Content-Length"))
    return FileMeta(target, size, sha256, git_sha1)


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None) or e
    return str(r) or type(e).__name__


# --- one file ---------------------------------------------------------------------------------

def fetch_file(remote: Remote, rel: str, dest: str, sha256: str | None = None, retries: int = 3,
               progress: bool = True) -> str:
    """Download ``rel`` to ``dest`` (resumable; size and checksum checked); return what was checked."""
    meta = head(remote, rel)
    want_sha = sha256 or meta.sha256
    part = dest + ".part"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    except OSError as e:
        raise PgolfError(os_error_message(e, dest)) from None
    resumed_from = _part_size(part)
    for attempt in range(retries + 1):
        try:
            _download_to_part(remote, meta, part, rel, progress)
            break
        except _NETWORK_ERRORS as e:
            if attempt == retries:
                have = _part_size(part)
                raise PgolfError(f"{meta.url}: download interrupted ({_reason(e)}) after {have} bytes; "
                                 f"run again to resume from {part}") from None
            time.sleep(min(2 ** attempt, 10))
    try:
        checked = _verify(part, dest, meta, want_sha, rel)
    except PgolfError:
        os.unlink(part)  # a bad file is never left behind, not even as a .part
        if resumed_from > 0:  # the old .part may be from another revision: try once from scratch
            return fetch_file(remote, rel, dest, sha256, retries, progress)
        raise
    os.replace(part, dest)
    return checked


def _part_size(part: str) -> int:
    try:
        return os.path.getsize(part) if os.path.isfile(part) else 0
    except OSError:
        return 0


def _download_to_part(remote: Remote, meta: FileMeta, part: str, rel: str, progress: bool) -> None:
    have = _part_size(part)
    if meta.size is not None and have > meta.size:
        os.unlink(part)
        have = 0
    if meta.size is not None and have == meta.size and have > 0:
        return
    extra = {"Accept-Encoding": "identity"}
    if have:
        extra["Range"] = f"bytes={have}-"
    req = urllib.request.Request(meta.url, headers=_headers(remote, meta.url, extra))
    try:
        resp = _OPENER.open(req, timeout=remote.timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete (verified next)
            return
        raise _http_error(meta.url, e.code, rel, remote) from None
    with resp:
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise PgolfError(f"{meta.url}: server resumed at the wrong offset "
                                 f"({resp.headers.get('Content-Range')!r}, wanted {have})")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server ignored Range: start over
        length = _int(resp.headers.get("Content-Length"))
        total = meta.size if meta.size is not None else (have + length if length is not None else None)
        bar = _bar(total, have, os.path.basename(part[:-5]), progress)
        written = have
        try:
            with open(part, mode) as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
        except OSError as e:
            if isinstance(e, _NETWORK_ERRORS):
                raise
            msg = os_error_message(e, part)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                msg += f" ({written} of {total or '?'} bytes; free space, then run again to resume)"
            raise PgolfError(msg) from None
        finally:
            bar.close()
        if length is not None and written - have < length:
            raise http.client.IncompleteRead(b"", length - (written - have))


def _bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if enabled else True, leave=False)


def _verify(part: str, dest: str, meta: FileMeta, want_sha: str | None, rel: str) -> str:
    size = os.path.getsize(part)
    if meta.size is not None and size != meta.size:
        raise PgolfError(f"{dest}: size {size} bytes, expected {meta.size}; the download was removed")
    sha = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode()) if meta.git_sha1 else None
    with open(part, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            if blob:
                blob.update(block)
    checked = f"{size} bytes"
    if want_sha:
        if sha.hexdigest() != want_sha:
            raise PgolfError(f"{dest}: sha256 mismatch (expected {want_sha}, got {sha.hexdigest()}); "
                             f"the download was removed")
        checked += ", sha256 ok"
    elif blob:
        if blob.hexdigest() != meta.git_sha1:
            raise PgolfError(f"{dest}: git blob sha1 mismatch (expected {meta.git_sha1}, got "
                             f"{blob.hexdigest()}); the download was removed")
        checked += ", git sha1 ok"
    else:
        checked += ", no checksum published"
    if rel.endswith(".bin"):
        from trainer.data import ShardError, read_shard_header

        try:
            read_shard_header(part)
        except ShardError as e:
            raise PgolfError(f"{dest}: not a valid shard ({str(e).split(': ', 1)[-1]}); the download "
                             f"was removed") from None
    return checked


# --- the whole job ----------------------------------------------------------------------------

def fetch_manifest(remote: Remote, root: str, log=print) -> dict | None:
    """The remote manifest.json (saved to ROOT/manifest.json), or None when the repo has none.

    Offline, a manifest saved by an earlier run is used (so a complete download re-checks offline).
    """
    dest = os.path.join(root, "manifest.json")
    try:
        fetch_file(remote, "manifest.json", dest, progress=False)
    except HTTPStatusError as e:
        if e.status == 404:
            return None
        raise
    except NetworkError as e:
        if not os.path.isfile(dest):
            raise
        log(f"note: {e}; using the manifest saved in {dest}")
    try:
        with open(dest, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PgolfError(f"{dest}: unreadable manifest ({e})") from None
    if not isinstance(obj, dict):
        raise PgolfError(f"{dest}: manifest is not a JSON object")
    return obj


def download(root: str, variant: str, train_shards: int = DEFAULT_TRAIN_SHARDS, *, remote: Remote,
             checksums: dict[str, str] | None = None, use_manifest: bool = True, retries: int = 3,
             progress: bool = True, log=print) -> list[str]:
    """Fetch the plan's files into ``root``; files already there are kept. Returns local paths."""
    vocab_of(variant)
    manifest = fetch_manifest(remote, root, log) if use_manifest else None
    plan = plan_files(manifest, variant, train_shards)
    log(f"{remote.endpoint}/datasets/{remote.repo}@{remote.revision}: {plan.manifest_note}; "
        f"fetching {len(plan.files)} files into {root}")
    checksums = {**PINNED_SHA256, **(checksums or {})}
    out = []
    for i, rel in enumerate(plan.files, 1):
        dest = os.path.join(root, *rel.split("/"))
        if os.path.isfile(dest):
            log(f"[{i}/{len(plan.files)}] {rel}: already present, kept")
        else:
            checked = fetch_file(remote, rel, dest, checksums.get(rel), retries, progress)
            log(f"[{i}/{len(plan.files)}] {rel}: {checked}")
        out.append(dest)
    return out



def download_docs(root: str, *, remote: Remote, checksums: dict[str, str] | None = None, retries: int = 3,
                  progress: bool = True, log=print) -> tuple[str, dict | None]:
    """The challenge's raw documents: ``ROOT/docs_selected.jsonl`` and the metadata beside it
    (None when the repo has none). Files already there are kept."""
    checksums = checksums or {}
    meta_path = os.path.join(root, DOCS_META_FILE)
    meta = None
    if not os.path.isfile(meta_path):
        try:
            fetch_file(remote, DOCS_META_FILE, meta_path, checksums.get(DOCS_META_FILE), retries, False)
        except HTTPStatusError as e:
            if e.status != 404:
                raise
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise PgolfError(f"{meta_path}: unreadable ({e})") from None
        if not isinstance(meta, dict):
            raise PgolfError(f"{meta_path}: not a JSON object")
    docs = os.path.join(root, DOCS_FILE)
    if os.path.isfile(docs):
        log(f"{DOCS_FILE}: already present, kept ({docs})")
    else:
        log(f"{remote.endpoint}/datasets/{remote.repo}@{remote.revision}: fetching {DOCS_FILE} into {root}")
        checked = fetch_file(remote, DOCS_FILE, docs, checksums.get(DOCS_FILE), retries, progress)
        log(f"{DOCS_FILE}: {checked}")
    return docs, meta


def download_tokenizer(root: str, variant: str, *, remote: Remote, checksums: dict[str, str] | None = None,
                       retries: int = 3, progress: bool = True, log=print) -> str:
    """A variant's tokenizer (checked against ``PINNED_SHA256``) into ``ROOT/tokenizers/``."""
    rel = tokenizer_file_of(variant)
    dest = os.path.join(root, *rel.split("/"))
    want = {**PINNED_SHA256, **(checksums or {})}.get(rel)
    if os.path.isfile(dest):
        if want and sha256_file(dest) != want:
            raise PgolfError(f"{dest}: sha256 differs from the expected {want}; remove it or pass "
                             f"--tokenizer to use it anyway")
        log(f"{rel}: already present, kept")
        return dest
    log(f"{rel}: {fetch_file(remote, rel, dest, want, retries, progress)}")
    return dest

