"""Packed train_gpt.py files are decoded, never run: every codec and text encoding real wrappers use, any
aliasing, raw LZMA with filters, payloads split over adjacent literals, nesting; sources of newer Python
(3.12 f-strings) are parsed for the scan, and what still does not parse is scanned as text."""

from __future__ import annotations

import base64
import bz2
import gzip
import lzma
import zlib

import brotli
import pytest
import zstandard

from verify.checks.legality import code_hits
from verify.pysource import modernize_fstrings, parse_source
from verify.unpack import looks_packed, unpack_source

PAYLOAD = """import os
import torch


def eval_two(model, val_tokens, ngram):
    loss_sum = 0.0
    with torch.no_grad():
        nll_a = model(val_tokens)
        nll_b = ngram(val_tokens)
        loss_sum += torch.minimum(nll_a, nll_b).sum()
    return loss_sum


if __name__ == "__main__":
    open(os.environ.get("VERIFY_RAN_IT", "/nonexistent/ran"), "w").write("executed")
"""


def _split(s: str, n: int = 60) -> str:
    """A literal split over adjacent string literals, as some wrappers write it."""
    return "".join(f'"{s[i : i + n]}"\n' for i in range(0, len(s), n))


def wrappers():
    raw = PAYLOAD.encode()
    lz2 = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    yield (
        "b85+lzma xz",
        f'import lzma,base64\nexec(lzma.decompress(base64.b85decode("{base64.b85encode(lzma.compress(raw)).decode()}")))\n',  # noqa: E501
    )
    yield (
        "b85+raw lzma2 aliased",
        (
            'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("'
            + base64.b85encode(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=lz2)).decode()
            + '"),format=L.FORMAT_RAW,filters=[{"id":L.FILTER_LZMA2}]))\n'
        ),
    )
    yield (
        "b64+lzma alone",
        f"import lzma, base64\nexec(lzma.decompress(base64.b64decode('{base64.b64encode(lzma.compress(raw, format=lzma.FORMAT_ALONE)).decode()}')))\n",  # noqa: E501
    )
    delta = [{"id": lzma.FILTER_DELTA, "dist": 2}, {"id": lzma.FILTER_LZMA2}]
    yield (
        "raw lzma delta chain",
        (
            'import lzma as Z, base64 as E\nexec(Z.decompress(E.b85decode("'
            + base64.b85encode(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=delta)).decode()
            + '"),format=Z.FORMAT_RAW,filters=[{"id":Z.FILTER_DELTA,"dist":2},{"id":Z.FILTER_LZMA2}]))\n'
        ),
    )
    yield (
        "split xz literal",
        (
            "import lzma as L,base64 as B\n__wrapper_size__=1\nexec(L.decompress(B.b85decode(\n"
            + _split(base64.b85encode(lzma.compress(raw)).decode())
            + ")))\n"
        ),
    )
    yield (
        "zlib b64",
        f"import zlib,base64\nexec(zlib.decompress(base64.b64decode('{base64.b64encode(zlib.compress(raw)).decode()}')).decode())\n",  # noqa: E501
    )
    yield (
        "raw deflate",
        f"import zlib,base64\nexec(zlib.decompress(base64.b64decode('{base64.b64encode(zlib.compress(raw)[2:-4]).decode()}'),-15))\n",  # noqa: E501
    )
    yield (
        "bz2 a85",
        f"import bz2,base64\nexec(bz2.decompress(base64.a85decode({base64.a85encode(bz2.compress(raw)).decode()!r})))\n",  # noqa: E501
    )
    yield (
        "gzip b64",
        f"import gzip,base64\nexec(gzip.decompress(base64.b64decode('{base64.b64encode(gzip.compress(raw)).decode()}')))\n",  # noqa: E501
    )
    yield (
        "brotli b85",
        f"import brotli,base64\nexec(brotli.decompress(base64.b85decode('{base64.b85encode(brotli.compress(raw)).decode()}')))\n",  # noqa: E501
    )
    yield (
        "zstd b64",
        (
            f"import zstandard,base64\nexec(zstandard.ZstdDecompressor().decompress(base64.b64decode("
            f"'{base64.b64encode(zstandard.ZstdCompressor().compress(raw)).decode()}')))\n"
        ),
    )
    yield "bytes literal zlib", f"import zlib\nexec(zlib.decompress({zlib.compress(raw)!r}))\n"


@pytest.mark.parametrize("name,wrapper", list(wrappers()), ids=[n for n, _ in wrappers()])
def test_every_wrapper_is_decoded_and_scanned_without_running(name, wrapper, tmp_path, monkeypatch):
    flag = tmp_path / "ran"
    monkeypatch.setenv("VERIFY_RAN_IT", str(flag))
    assert looks_packed(wrapper), name
    src = unpack_source(wrapper)
    assert src.text == PAYLOAD and src.layers and not src.note, (name, src.layers, src.note)
    on, _, _ = code_hits(src.text)
    assert [h.kind for h in on] == ["oracle-gate"]
    assert not flag.exists()


def test_nested_wrappers():
    inner = f'import lzma,base64\nexec(lzma.decompress(base64.b85decode("{base64.b85encode(lzma.compress(PAYLOAD.encode())).decode()}")))\n'  # noqa: E501
    outer = f"import zlib,base64\nexec(zlib.decompress(base64.b64decode('{base64.b64encode(zlib.compress(inner.encode())).decode()}')))\n"  # noqa: E501
    src = unpack_source(outer)
    assert src.layers == ["b64+zlib", "b85+lzma"] and src.text == PAYLOAD


def test_an_undecodable_wrapper_is_reported_and_a_full_source_is_not_a_wrapper():
    src = unpack_source("import zlib\nexec(zlib.decompress(b'" + "x" * 300 + "'))\n")
    assert src.layers == [] and "no payload could be decoded" in src.note
    full = PAYLOAD + "".join(
        f"\ndef f{i}():\n    return torch.compile(brotli.decompress(b''))\n" for i in range(5)
    )
    assert not looks_packed(full + "exec('1')\n" + "\n" * 200)


def test_our_packed_trainer_unpacks_in_one_layer():
    from pgolf.pack import bundle_source, pack_source

    src = unpack_source(pack_source(bundle_source()))
    assert src.layers == ["b85+lzma"] and not src.note and "def main()" in src.text


NEWER = """import torch


def report(categories, log):
    for cat in sorted(categories):
        log(f"  {cat}: {", ".join(sorted(categories[cat]))}")


def eval_gate(nll_a, nll_b):
    return torch.minimum(nll_a, nll_b)
"""


def test_python_312_fstrings_are_parsed_with_their_line_numbers():
    fixed, n = modernize_fstrings(NEWER)
    assert n == 1 and fixed.count("\n") == NEWER.count("\n")
    p = parse_source(NEWER)
    assert p.tree is not None and "rewriting 1 f-string" in p.note
    on, _, _ = code_hits(NEWER)
    assert [(h.kind, h.line) for h in on] == [
        ("oracle-gate", NEWER.splitlines().index("    return torch.minimum(nll_a, nll_b)") + 1)
    ]


def test_a_source_that_still_does_not_parse_is_scanned_as_text():
    broken = NEWER + "\ndef bad(:\n    pass\n    logits[:, targets] += 3.0\n"
    p = parse_source(broken)
    assert p.tree is None and "scanned as text" in p.note
    on, _, note = code_hits(broken)
    assert {h.kind for h in on} == {"oracle-gate", "gold-logit-bias"} and "scanned as text" in note
