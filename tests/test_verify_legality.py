"""Check 7's static scan: each heuristic on a small source, and packed wrappers decoded, never run."""

from __future__ import annotations

import base64
import zlib

import pytest
from conftest_verify import CLEAN_TRAIN_GPT, PREQUANT_TTT_TRAIN_GPT, packed

from verify.checks.legality import scan_source
from verify.unpack import looks_packed, unpack_source


def kinds(src: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for h in scan_source(src):
        out.setdefault(h.kind, []).append(h.line)
    return out


def test_clean_script_has_no_hits():
    assert kinds(CLEAN_TRAIN_GPT) == {}


def test_prequant_ttt_by_call_order():
    k = kinds(PREQUANT_TTT_TRAIN_GPT)
    lines = PREQUANT_TTT_TRAIN_GPT.splitlines()
    assert k["pre-quant-ttt"] == [lines.index("    adapt(model, opt, val_tokens, 3)") + 1]
    assert k["val-grad"] == [lines.index("def adapt(model, opt, val_tokens, epochs):") + 1]


def test_score_first_ttt_after_quantization_is_only_flagged_for_a_human():
    src = (
        CLEAN_TRAIN_GPT
        + """

def eval_ttt(model, opt, val_tokens):
    total = 0.0
    for chunk in val_tokens.split(1024):
        with torch.no_grad():
            total += model(chunk[:-1], chunk[1:])
        loss = model(chunk[:-1], chunk[1:])
        loss.backward()
        opt.step()
    return total
"""
    )
    k = kinds(src)
    assert list(k) == ["val-grad"]  # not pre-quant, not val-in-train (an eval function)


@pytest.mark.parametrize(
    "snippet,kind",
    [
        (
            "def train(model, opt, loader, val_tokens):\n    for step in range(10):\n"
            "        x = val_tokens[step]\n        loss = model(x)\n        loss.backward()\n",
            "val-in-train",
        ),
        ("TTT_EPOCHS = int(os.environ.get('TTT_EPOCHS', '8'))\n", "ttt-epochs"),
        ("    ttt_epochs: int = 3\n", "ttt-epochs"),
        ("ngram_cache = {}\n", "ngram-cache"),
        ("bigram_counts = collections.Counter()\n", "ngram-cache"),
        ("logits = logits + bias[None]\n", "logit-bias"),
        ("logits += self.logit_bias\n", "logit-bias"),
        ("import urllib.request\n", "network"),
        ("from huggingface_hub import hf_hub_download\n", "network"),
        ("import requests\n", "network"),
        ("s = socket.socket()\n", "network"),
        ("data = open('/home/me/val_cache.bin').read()\n", "outside-files"),
        ("p = open('../other/file.txt')\n", "outside-files"),
        ("p = os.path.expanduser('~/x')\n", "outside-files"),
        ("RUN_PREQUANT_TTT = 1\n", "pre-quant-ttt"),
    ],
)
def test_each_heuristic(snippet, kind):
    assert kind in kinds(snippet), kinds(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)\n",
        "bigram_hash = BigramHashEmbedding(2048, 128)\n",
        "global_ttt_epochs = 1\n",
        "data_path = './data/datasets/fineweb10B_sp8192'\n",
        "devnull = open('/dev/null', 'w')\n",
        "# import requests (a comment)\n",
    ],
)
def test_ordinary_code_is_not_flagged(snippet):
    assert kinds(snippet) == {}


def test_unpack_nested_wrappers_without_running_them():
    inner = packed(PREQUANT_TTT_TRAIN_GPT + "raise SystemExit('must never run')\n")
    outer = (
        "import base64, zlib\nexec(zlib.decompress(base64.b64decode('"
        + base64.b64encode(zlib.compress(inner.encode())).decode()
        + "')))\n"
    )
    assert looks_packed(outer)
    src = unpack_source(outer)
    assert src.layers == ["b64+zlib", "b85+lzma"] and src.text.startswith('"""A tiny stand-in')
    assert not looks_packed(CLEAN_TRAIN_GPT) and unpack_source(CLEAN_TRAIN_GPT).layers == []


def test_undecodable_wrapper_is_reported():
    src = unpack_source("import zlib\nexec(zlib.decompress(b'" + "x" * 300 + "'))\n")
    assert src.layers == [] and "no payload could be decoded" in src.note


def test_our_packed_trainer_unpacks_in_one_layer_without_a_note():
    # the decoded trainer calls torch.compile and brotli.decompress: that alone is not a wrapper
    from pgolf.pack import bundle_source, pack_source

    src = unpack_source(pack_source(bundle_source()))
    assert src.layers == ["b85+lzma"] and not src.note and "def main()" in src.text
