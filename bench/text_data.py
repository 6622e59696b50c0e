"""Benchmark data for the GPU benches: real English text -> shards in the challenge's layout.

Sources (``--source``):
- ``wikitext``: ../shared/corpus (WikiText-103, when present). Train = wikitext103.valid.tokens,
  val = wikitext103.test.tokens, one document per article (split at ``= Title =`` lines), the
  ``@-@`` markers undone. Only ~0.3M tokens of training text: a record-config GPU run repeats it
  hundreds of times (fine for throughput, useless for val_bpb).
- ``linux-doc``: the reStructuredText sources of the Linux kernel documentation from the Debian
  package ``linux-doc-6.1`` (GPL-2.0; ~24 MB of English, ~6M sp8192 tokens), fetched with
  ``apt-get download linux-doc-6.1 && dpkg -x linux-doc-6.1_*.deb DIR``; pass ``--linux-doc DIR``.
  One document per file, every 20th file held out as val.
Each document is BOS-prefixed and tokenized with the challenge's official tokenizer of each vocab
size (from ../shared/tokenizers). Writes OUT/datasets/text_sp{V}/fineweb_{train,val}_000000.bin
and OUT/tokenizers/*.model. Benchmark input only: the product never reads ../shared.

    python bench/text_data.py --source linux-doc --linux-doc /tmp/debtxt/x --out .gpu
"""

from __future__ import annotations

import argparse
import os
import re
import shutil

import sentencepiece as spm

from pgolf.caseops import encode_caseops
from pgolf.shards import byte_sidecar, encode_documents, write_shard, write_split
from trainer.bpb import ByteCounter

_TITLE = re.compile(r"^ = [^=].* = $")
_MARKERS = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")]


def articles(path: str) -> list[str]:
    docs: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if _TITLE.match(line):
                docs.append([])
            if not docs:
                docs.append([])
            for a, b in _MARKERS:
                line = line.replace(a, b)
            docs[-1].append(line.strip())
    return ["\n".join(ln for ln in d if ln) for d in docs if any(d)]


def linux_doc_files(root: str) -> tuple[list[str], list[str]]:
    src = os.path.join(root, "usr", "share", "doc", "linux-doc-6.1", "html", "_sources")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".rst.txt"))
    if not paths:
        raise SystemExit(f"{src}: no .rst.txt files (extract linux-doc-6.1 there)")
    docs = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            docs.append(f.read())
    return [d for i, d in enumerate(docs) if i % 20], [d for i, d in enumerate(docs) if i % 20 == 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default=".gpu")
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 1024])
    ap.add_argument("--source", choices=["wikitext", "linux-doc"], default="wikitext")
    ap.add_argument("--linux-doc", help="folder where linux-doc-6.1_*.deb was extracted")
    ap.add_argument("--caseops", action="store_true",
                    help="also the CaseOps variant with the 1.0611 record's CaseOps tokenizer "
                         f"(SHARED/tokenizers/{CASEOPS_TOKENIZER}) and val byte sidecars")
    a = ap.parse_args()
    if a.source == "linux-doc":
        train, val = linux_doc_files(a.linux_doc or "")
    else:
        train = articles(os.path.join(a.shared, "corpus", "wikitext103.valid.tokens"))
        val = articles(os.path.join(a.shared, "corpus", "wikitext103.test.tokens"))
    os.makedirs(os.path.join(a.out, "tokenizers"), exist_ok=True)
    for v in a.vocab:
        src = os.path.join(a.shared, "tokenizers", f"fineweb_{v}_bpe.model")
        tok = os.path.join(a.out, "tokenizers", os.path.basename(src))
        shutil.copyfile(src, tok)
        sp = spm.SentencePieceProcessor(model_file=tok)
        ds = os.path.join(a.out, "datasets", f"text_sp{v}")
        os.makedirs(ds, exist_ok=True)
        tr, va = encode_documents(sp, train, v, tok), encode_documents(sp, val, v, tok)
        write_split(ds, "train", tr)
        write_split(ds, "val", va)
        print(f"{a.source} sp{v}: {len(train)} train docs {tr.size:,} tokens; "
              f"{len(val)} val docs {va.size:,} tokens -> {ds}")
    if a.caseops:
        write_caseops(a, train, val)


CASEOPS_TOKENIZER = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


def write_caseops(a, train: list[str], val: list[str]) -> None:
    """The 1.0611 record's data layout: CaseOps-transformed documents, its tokenizer, and a
    byte sidecar per val shard (bytes of the original text per token)."""
    src = os.path.join(a.shared, "tokenizers", CASEOPS_TOKENIZER)
    tok = os.path.join(a.out, "tokenizers", CASEOPS_TOKENIZER)
    shutil.copyfile(src, tok)
    sp = spm.SentencePieceProcessor(model_file=tok)
    ds = os.path.join(a.out, "datasets", "text_sp8192_caseops")
    os.makedirs(ds, exist_ok=True)
    tr = encode_documents(sp, [encode_caseops(d) for d in train], 8192, tok)
    va = encode_documents(sp, [encode_caseops(d) for d in val], 8192, tok)
    write_split(ds, "train", tr)
    (vpath,) = write_split(ds, "val", va)
    write_shard(vpath.replace("fineweb_val_", "fineweb_val_bytes_"), byte_sidecar(ByteCounter(sp, 8192), va))
    print(f"{a.source} sp8192 CaseOps: {tr.size:,} train tokens; {va.size:,} val tokens + byte sidecar "
          f"-> {ds}")


if __name__ == "__main__":
    main()
