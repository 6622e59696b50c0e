"""``pgolf data``: put shards and a tokenizer in the official layout under ``--out`` (default ./data).

Three sources:
  (default)            download the challenge's FineWeb shards + tokenizer (pgolf/download.py)
  --from-text FILE...  offline: train a tokenizer on your text files and write shards
  --embedded           offline: the same from the embedded default text (pgolf/corpus.py)

CaseOps data (the default stack's, PRESET=pr1855): ``--variant sp8192_caseops`` downloads the
challenge's raw documents and the 1.0611 record's CaseOps tokenizer and builds the shards and the
val byte sidecars here (``--prebuilt``: download the record's prepared shards instead);
``--caseops`` with --from-text / --embedded trains a CaseOps tokenizer on your text.
"""

from __future__ import annotations

import argparse
import os

from pgolf.download import CASEOPS_REPO, CASEOPS_VARIANT, DEFAULT_VAL_DOCS, DOCS_FILE, DOCS_REPO
from pgolf.errors import PgolfError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="./data", help="root folder (datasets/ and tokenizers/ go under it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-text", nargs="+", metavar="FILE", help="UTF-8 text files to build from")
    src.add_argument("--embedded", action="store_true", help="build from the embedded default text")

    dl = p.add_argument_group("download (the default)")
    dl.add_argument("--variant", default="sp8192", choices=["sp8192", "sp1024", "sp8192_caseops"])
    dl.add_argument("--train-shards", type=int, default=80,
                    help="train shards to fetch or build (default 80)")
    dl.add_argument("--repo", help="HF dataset repo (default: MATCHED_FINEWEB_REPO_ID or per variant)")
    dl.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    dl.add_argument("--endpoint", default=None, help="default: HF_ENDPOINT or https://huggingface.co")
    dl.add_argument("--remote-prefix", default=None, help="root folder inside the repo (default datasets)")
    dl.add_argument("--checksums", metavar="FILE", help="sha256sum-style or JSON file of expected hashes")
    dl.add_argument("--no-manifest", action="store_true", help="do not fetch manifest.json")
    dl.add_argument("--retries", type=int, default=3, help="network retries per file (resuming)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bars")
    dl.add_argument("--prebuilt", action="store_true",
                    help=f"sp8192_caseops: download the record's prepared shards ({CASEOPS_REPO})")
    dl.add_argument("--tokenizer-repo", default=CASEOPS_REPO,
                    help="sp8192_caseops: repo of the CaseOps tokenizer (default %(default)s)")
    dl.add_argument("--val-docs", type=int, default=None,
                    help=f"sp8192_caseops: validation documents (default: the docs' metadata, else "
                         f"{DEFAULT_VAL_DOCS:,})")
    dl.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="sp8192_caseops: tokenizing processes (default: the CPU count)")

    tx = p.add_argument_group("--from-text / --embedded")
    tx.add_argument("--vocab-size", type=int, default=1024)
    tx.add_argument("--val-fraction", type=float, default=0.1, help="every k-th document is val (k=1/frac)")
    tx.add_argument("--split", default="paragraphs", choices=["paragraphs", "lines", "file"],
                    help="how text files become documents")
    tx.add_argument("--shard-tokens", type=int, default=100_000_000, help="max tokens per shard")
    tx.add_argument("--tokenizer", metavar="MODEL",
                    help="use this SentencePiece model instead of training one (sp8192_caseops: "
                         "instead of downloading the record's)")
    tx.add_argument("--caseops", action="store_true",
                    help="CaseOps data: transform the text, reserve the operators in the tokenizer, write "
                         "val byte sidecars")
    tx.add_argument("--name", help="dataset folder name (default fineweb10B_sp{V}[_lossless_caps_caseops_v1_"
                                   "reserved])")
    tx.add_argument("--force", action="store_true", help="replace an existing dataset/tokenizer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_text or args.embedded:
        return _build(args)
    if args.caseops and args.variant != CASEOPS_VARIANT:
        raise PgolfError("--caseops goes with --from-text or --embedded; to download CaseOps data, use "
                         "--variant sp8192_caseops")
    if args.variant == CASEOPS_VARIANT and not args.prebuilt:
        return _build_caseops_from_docs(args)
    return _download(args)


def _build(args) -> int:
    from pgolf.corpus import default_documents, text_file_documents
    from pgolf.dataset import build_dataset

    if args.embedded:
        docs, source = default_documents(), "embedded: pydoc_data.topics + stdlib docstrings"
    else:
        docs, source = text_file_documents(args.from_text, split=args.split), "files: " + " ".join(
            os.path.basename(f) for f in args.from_text)
    if len(docs) < 2:
        raise PgolfError(f"{' '.join(args.from_text or ['embedded text'])}: {len(docs)} document(s) found, "
                         f"need at least 2 for a train and a val split (try --split lines or paragraphs)")
    info = build_dataset(docs, args.out, args.vocab_size, val_fraction=args.val_fraction,
                         shard_tokens=args.shard_tokens, tokenizer=args.tokenizer, name=args.name,
                         force=args.force, source=source, caseops=args.caseops)
    _print_built(info)
    return 0


def _print_built(info) -> None:
    print(f"wrote {len(info.train_shards)} train shard(s) ({info.train_tokens:,} tokens, "
          f"{info.train_docs} docs) "
          f"and {len(info.val_shards)} val shard(s) ({info.val_tokens:,} tokens, {info.val_docs} docs)")
    if info.val_byte_shards:
        print(f"wrote {len(info.val_byte_shards)} val byte sidecar(s): {info.val_bytes:,} bytes of "
              f"original text")
    _print_env(info.dataset_dir, info.tokenizer_path, info.vocab_size)


def _build_caseops_from_docs(args) -> int:
    """sp8192_caseops: the challenge's raw documents + the record's CaseOps tokenizer -> shards here."""
    from pgolf.dataset import build_from_jsonl
    from pgolf.download import download_docs, download_tokenizer, read_checksums, remote_from_env

    sums = read_checksums(args.checksums) if args.checksums else None
    docs_repo = args.repo or os.environ.get("MATCHED_FINEWEB_REPO_ID") or DOCS_REPO
    docs_remote = remote_from_env(args.variant, docs_repo, args.revision, args.endpoint, args.remote_prefix)
    progress = not args.no_progress
    if args.tokenizer:
        tok = args.tokenizer
    else:
        tok_remote = remote_from_env(args.variant, args.tokenizer_repo, args.revision, args.endpoint,
                                     args.remote_prefix)
        tok = download_tokenizer(args.out, args.variant, remote=tok_remote, checksums=sums,
                                 retries=args.retries, progress=progress)
    docs, meta = download_docs(args.out, remote=docs_remote, checksums=sums, retries=args.retries,
                               progress=progress)
    val_docs = args.val_docs or int((meta or {}).get("docs_val") or DEFAULT_VAL_DOCS)
    print(f"== building CaseOps shards from {docs} ({val_docs:,} val docs, up to {args.train_shards} train "
          f"shards of {args.shard_tokens:,} tokens, {args.workers} worker(s))", flush=True)
    info = build_from_jsonl(docs, args.out, tok, caseops=True, val_docs=val_docs,
                            train_shards=args.train_shards, shard_tokens=args.shard_tokens, name=args.name,
                            force=args.force, workers=args.workers,
                            source=f"{docs_remote.url(DOCS_FILE)} + {os.path.basename(tok)}")
    _print_built(info)
    return 0


def _download(args) -> int:
    from pgolf.download import dataset_dir_of, download, read_checksums, remote_from_env, vocab_of

    remote = remote_from_env(args.variant, args.repo, args.revision, args.endpoint, args.remote_prefix)
    sums = read_checksums(args.checksums) if args.checksums else None
    paths = download(args.out, args.variant, args.train_shards, remote=remote, checksums=sums,
                     use_manifest=not args.no_manifest, retries=args.retries, progress=not args.no_progress)
    tok = next((p for p in paths if p.endswith(".model")), "?")
    _print_env(os.path.join(args.out, "datasets", dataset_dir_of(args.variant)), tok, vocab_of(args.variant))
    return 0


def _print_env(ds_dir: str, tok: str, vocab: int) -> None:
    print(f"data ready: DATA_PATH={ds_dir} TOKENIZER_PATH={tok} VOCAB_SIZE={vocab}")
