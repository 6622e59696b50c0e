"""Parity with a reference record script: same weights, same batch -> same loss, before and after one step.

Our GPT (``PRESET``) and the reference's GPT are built with the same architecture; our weights are
copied into the reference's (every reference parameter set exactly once, every one of ours used
exactly once); both see the same batch of token ids with BOS=1 document starts inside (each row
starts with one, so the packed single-row layout of the 1.0611 script and our [rows, seq] layout
see the same documents; with VARLEN_ATTN both get the same ``cu_seqlens``). For each weight set
(``init``: our initial weights; ``perturbed``: every parameter moved off its init, so zero-init
projections, gates, SmearGate, lane weights and skip gates all take part) and each recurrence
setting, the table gives the loss of both models, then the loss on a second batch after one
optimizer step each (ours: build_optimizers + sync_and_clip + step; theirs: its Optimizers and
Muon in single-process mode, the same clip; same LRs, same momentum, LR scale 1), and per
parameter group the largest update and the difference of the updates. In float32 on a CPU the
final hidden states must agree too (relative L2), a sharper test than the mean loss.

    python bench/parity.py --preset pr1855 --ref ../shared/reference/sota_1.0611/train_gpt.py \
        --tiny --out bench/results/parity-cpu-tiny-pr1855.md
    python bench/parity.py --preset pr1493 --ref ../shared/reference/r1493_1.0810/train_gpt.decoded.py --tiny
    python bench/parity.py --preset pr1774 --ref ../shared/reference/seed1774_1.0981/train_gpt.py --tiny
    # GPU, full size (bf16 autocast, as both trainers run):
    python bench/parity.py --preset pr1855 --ref .gpu/ref/sota_train_gpt.py --device cuda --out $OUT/p.md

The references import ``flash_attn_interface`` (bench/shims stands in: our attention backends) and,
for 1.0611, ``triton`` (where Triton is missing, a stand-in module is in place while the script is
imported; its kernels are then switched off: FUSED_CE_ENABLED=0 and the reference MLP's
``use_fused``). ``torch.compile`` is the identity while a script is imported (the references
decorate their Newton-Schulz with it): both sides run eager. ``--trace`` compares the
activations of every embedding / attention / MLP / block call and the final hidden states, and the
gradients of every mapped parameter, to locate a mismatch.

Benchmark input only; the product never runs the reference scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import inspect
import math
import os
import platform
import shlex
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIMS = ROOT / "bench" / "shims"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ours first, before bench/shims is on sys.path: trainer.attention then finds a real FlashAttention 3
# when one is installed, and the shim (imported by the reference) routes to the same backend
from trainer.attention import attention_backend, select_attention_backend  # noqa: E402
from trainer.config import Hyperparameters  # noqa: E402
from trainer.data import DOC_BOS_ID, doc_cu_seqlens  # noqa: E402
from trainer.model import GPT, layer_schedule  # noqa: E402
from trainer.optim import build_optimizers, muon_momentum_at, split_params  # noqa: E402

# relative tolerance on the loss: (forward, after one step)
TOLERANCES = {
    # fp32 on the CPU: the forward is the same function to rounding; the step is not exact because
    # the references' Muon runs in bf16 on every device (its momentum buffer too, in 1.0611) and ours
    # in fp32 on the CPU
    "fp32": (1e-5, 2e-4),
    # bf16 autocast on the GPU, as both trainers train: rounding of bf16 activations (the 1.0810 /
    # PR #1774 scripts also softcap the logits in bf16), bf16 Newton-Schulz on both sides
    "bf16": (3e-3, 1e-2),
}

# relative L2 difference of the final hidden states: fp32, where both sides run the same operations
# (measured ~3e-7 on the tiny shapes; a 0.2% change of one layer's q_gain gives 5e-5); bf16: reported,
# not judged
TOL_HIDDEN = {"fp32": 1e-5, "bf16": None}

# fp32 on the CPU with the reference's Muon made fp32 (--ref-muon-fp32): what is left is the bf16
# buffer the 1.0810 / PR #1774 Muon keeps its update in, and summation order
TOL_STEP_MUON_FP32 = 1e-4

# the --tiny shape: the preset's switches kept, the width, heads, vocabulary and sequence shrunk
# (head dim 32: room for ROPE_DIMS=16 and PR #1774's 16 shared dims); the layers too, 5 fewer with
# the same structure (see tiny_overrides)
TINY = {"MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "512",
        "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64"}


def tiny_overrides(h) -> dict[str, str]:
    """5 layers fewer (11 -> 6, 12 -> 7), the loop on layers 1..2, parallel residuals / lanes on the
    last 2 layers, XSA on as many of the last layers as before minus 5 (all of them for 11 of 11):
    both decoder schedules (recurrence off and on) end in the lane layers, as at full size."""
    env = dict(TINY)
    if h.num_layers >= 9:
        cut = 5
        layers = h.num_layers - cut
        env["NUM_LAYERS"] = str(layers)
        if h.num_loops > 0:
            env.update(LOOP_START="1", LOOP_END="2")
        if h.parallel_start_layer >= 0:
            env["PARALLEL_START_LAYER"] = str(layers - 2)
        env["XSA_LAST_N"] = str(max(0, min(layers, h.xsa_last_n - cut)))
    return env


_LOADED: dict[str, types.ModuleType] = {}


# --- loading a reference script ----------------------------------------------------------------
class _TritonStub:
    """Anything: attribute access, calls and indexing all give a stub (``tl.constexpr`` in kernel
    signatures is evaluated when the script is imported)."""

    def __getattr__(self, name: str) -> _TritonStub:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs) -> _TritonStub:
        return self

    def __getitem__(self, key) -> _TritonStub:
        return self


class _StubKernel:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        raise RuntimeError(f"parity: Triton is not installed here; kernel {self.fn.__name__} cannot run "
                           "(the harness switches the reference's fused kernels off)")


def _triton_standin() -> dict[str, types.ModuleType]:
    """A minimal ``triton`` package: enough for ``@triton.jit`` and ``triton.language`` at import."""
    stub = _TritonStub()

    def attr(name: str):
        if name.startswith("__"):  # module dunders (inspect asks for __file__): absent, as usual
            raise AttributeError(name)
        return stub

    triton = types.ModuleType("triton")
    triton.__path__ = []  # a package, so its submodules import

    def jit(fn=None, **_kw):
        return _StubKernel(fn) if fn is not None else (lambda f: _StubKernel(f))

    triton.jit = jit
    triton.cdiv = lambda a, b: -(-a // b)
    triton.__getattr__ = attr
    language = types.ModuleType("triton.language")
    language.__getattr__ = attr
    tools = types.ModuleType("triton.tools")
    tools.__path__ = []
    desc = types.ModuleType("triton.tools.tensor_descriptor")
    desc.TensorDescriptor = stub
    triton.language, triton.tools, tools.tensor_descriptor = language, tools, desc
    return {"triton": triton, "triton.language": language, "triton.tools": tools,
            "triton.tools.tensor_descriptor": desc}


def _nested_quotes_to_single(line: str) -> str:
    """Python < 3.12: inside the braces of an f"..." string, double quotes become single quotes
    (PEP 701 lets 3.12 nest the same quotes; the 1.0810 script does, in a log line)."""
    out, i, n = list(line), 0, len(line)
    while i < n:
        if line[i] == '"' and i > 0 and line[i - 1] in "fF" and line[i:i + 3] != '"""':
            j, depth, inner = i + 1, 0, False
            while j < n:
                c = line[j]
                if depth == 0:
                    if c == '"':
                        break
                    if c == "{":
                        if line[j + 1:j + 2] == "{":
                            j += 1
                        else:
                            depth = 1
                elif c == '"':
                    out[j] = "'"
                    inner = not inner
                elif not inner and c in "{}":
                    depth += 1 if c == "{" else -1
                j += 1
            i = j
        i += 1
    return "".join(out)


def _compile_script(path: Path) -> tuple[types.CodeType, int]:
    """Compile a reference script; on an older Python, lines that only 3.12 parses (nested
    f-string quotes) are rewritten to the same meaning. Returns the code and the lines rewritten."""
    lines = path.read_text().splitlines(keepends=True)
    rewritten = 0
    for _ in range(50):
        try:
            return compile("".join(lines), str(path), "exec"), rewritten
        except SyntaxError as e:
            if sys.version_info >= (3, 12) or not e.lineno or "f-string" not in str(e.msg):
                raise
            fixed = _nested_quotes_to_single(lines[e.lineno - 1])
            if fixed == lines[e.lineno - 1]:
                raise
            lines[e.lineno - 1] = fixed
            rewritten += 1
    raise SyntaxError(f"{path}: too many lines need rewriting for Python {sys.version.split()[0]}")


def _no_compile(fn=None, **_kw):
    return fn if fn is not None else (lambda f: f)


def load_reference(path: str | Path, env: dict[str, str]) -> types.ModuleType:
    """Import a reference script as a module (once per process and path).

    During the import only (all restored after it, so a test session sees no trace of it): ``env``
    is in os.environ (the references read their Hyperparameters from it at import), bench/shims and
    the repository root are on sys.path (flash_attn_interface: the shim), a Triton stand-in is in
    sys.modules where Triton is missing, and ``torch.compile`` is the identity."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such reference script")
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    saved_env, saved_path = dict(os.environ), list(sys.path)
    had_fa = "flash_attn_interface" in sys.modules
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # single process: no process group
        os.environ.pop(k, None)
    os.environ.update(env)
    sys.path[:0] = [str(SHIMS), str(ROOT)]
    standin = {}
    if importlib.util.find_spec("triton") is None:
        standin = _triton_standin()
        sys.modules.update(standin)
    name = "parity_ref_" + hashlib.sha1(key.encode()).hexdigest()[:10]
    code, rewritten = _compile_script(path)
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    # the scripts' @torch.compile (Newton-Schulz) stays the plain function: both sides run eager, and
    # torch's compiler stack is not imported (it would look for Triton and find the stand-in)
    saved_compile = torch.compile
    torch.compile = _no_compile
    try:
        exec(code, mod.__dict__)
    except Exception:
        sys.modules.pop(name, None)
        raise
    finally:
        torch.compile = saved_compile
        for k in standin:
            sys.modules.pop(k, None)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        if not had_fa:  # the script holds the shim's functions; nothing else should find the shim
            mod.PARITY_FA_MODULE = sys.modules.pop("flash_attn_interface", None)
    mod.PARITY_TRITON_STANDIN = bool(standin)
    mod.PARITY_REWRITTEN_FSTRINGS = rewritten
    _LOADED[key] = mod
    return mod


@dataclasses.dataclass
class RefKind:
    banked: bool  # 1.0611: the block matrices live in qo/kv/mlp banks on the GPT
    varlen: bool  # forward takes cu_seqlens (document packing)
    lanes: bool  # two-lane parallel residuals (parallel_post/resid_lambdas)
    shared_heads: bool  # PR #1774 shared-specific attention (SHARED_HEAD_DIM)
    smear: bool  # SmearGate
    sparse_gate: bool  # sparse attention output gate


def reference_kind(mod: types.ModuleType) -> RefKind:
    names = set()  # attribute names the GPT's methods use (no source parsing: see _compile_script)
    for fn in vars(mod.GPT).values():
        if inspect.isfunction(fn):
            names.update(fn.__code__.co_names)
    hp = mod.Hyperparameters
    return RefKind(banked="qo_bank" in names,
                   varlen="cu_seqlens" in inspect.signature(mod.GPT.forward).parameters,
                   lanes="parallel_post_lambdas" in names,
                   shared_heads=hasattr(hp, "shared_head_dim"),
                   smear=hasattr(hp, "smear_gate_enabled"),
                   sparse_gate=hasattr(hp, "sparse_attn_gate_enabled"))


# --- the reference's hyperparameters from ours --------------------------------------------------
def _b(v: bool) -> str:
    return "1" if v else "0"


def reference_settings(h, fused: bool) -> dict[str, tuple[str, object]]:
    """ENV -> (reference attribute, value): the architecture and optimizer numbers of ``h`` under
    the references' names (a superset: each script reads the ones it knows; ENV = NAME.upper())."""
    same = ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "rope_dims", "xsa_last_n",
            "num_loops", "loop_start", "loop_end", "train_seq_len", "eval_seq_len", "muon_backend_steps",
            "muon_momentum_warmup_steps", "parallel_start_layer", "parallel_final_lane", "seed")
    floats = ("mlp_mult", "rope_base", "qk_gain_init", "logit_softcap", "tied_embed_init_std", "matrix_lr",
              "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr", "muon_momentum",
              "muon_momentum_warmup_start", "muon_wd", "embed_wd", "adam_wd", "beta1", "beta2", "adam_eps",
              "grad_clip_norm", "min_lr", "sparse_attn_gate_scale")
    bools = ("tie_embeddings", "ln_scale", "muon_row_normalize")
    values: dict[str, object] = {a: getattr(h, a) for a in same}
    values.update({a: float(getattr(h, a)) for a in floats})
    values.update({a: bool(getattr(h, a)) for a in bools})
    values.update(
        embedding_dim=h.model_dim, rope_yarn=False, rope_train_seq_len=h.train_seq_len,
        skip_gates_enabled=bool(h.skip_gates),
        parallel_residual_start=h.parallel_start_layer,  # 1.0810 / PR #1774 name
        shared_head_dim=h.shared_specific_dims, smear_gate_enabled=bool(h.smear_gate),
        gate_window=h.attn_gate_window, sparse_attn_gate_enabled=bool(h.sparse_attn_gate),
        sparse_attn_gate_init_std=0.0, gated_attn_enabled=False, attn_out_gate_enabled=False,
        fused_ce_enabled=bool(fused), caseops_enabled=False, ttt_enabled=False)
    return {a.upper(): (a, v) for a, v in values.items()}


def reference_env(settings: dict[str, tuple[str, object]]) -> dict[str, str]:
    return {k: (_b(v) if isinstance(v, bool) else str(v)) for k, (_a, v) in settings.items()}


def reference_hparams(mod: types.ModuleType, settings: dict[str, tuple[str, object]]):
    """The reference's Hyperparameters, with our numbers set on the instance too (the class read the
    environment of the first import; a cached module may have seen another shape)."""
    rh = mod.Hyperparameters()
    for _env, (attr, value) in settings.items():
        if hasattr(type(rh), attr):
            setattr(rh, attr, value)
    rh.distributed, rh.rank, rh.world_size, rh.local_rank = False, 0, 1, 0
    return rh


def check_compatible(h, kind: RefKind, ref_path: str) -> None:
    """One clear line when the preset uses something the reference does not have (or vice versa)."""
    def bad(msg: str):
        raise ValueError(f"{ref_path}: {msg}")
    if h.bigram_hash_buckets or h.gated_attn:
        bad("the harness maps neither BIGRAM_HASH_BUCKETS nor GATED_ATTN")
    if h.parallel_start_layer >= 0:
        if kind.lanes and h.parallel_lanes != 2:
            bad(f"this reference has two-lane residuals only; PARALLEL_LANES={h.parallel_lanes}")
        if not kind.lanes and h.parallel_lanes != 1:
            bad(f"this reference has one-lane parallel residuals only; PARALLEL_LANES={h.parallel_lanes}")
        if kind.lanes and h.parallel_start_layer == 0:
            bad("the 1.0611 reference treats PARALLEL_START_LAYER=0 as off")
        if kind.lanes:  # its rule is per layer (i >= start); ours, the decoder's tail of such layers
            for on in (False, True):
                _enc, dec = layer_schedule(h.num_layers, h.loop_start, h.loop_end, h.num_loops, on)
                lanes = [i >= h.parallel_start_layer for i in dec]
                if any(a and not b for a, b in zip(lanes, lanes[1:])):
                    bad(f"decoder {dec} (recurrence {_onoff(on)}) drops below PARALLEL_START_LAYER="
                        f"{h.parallel_start_layer} after a lane layer: the two models differ there by design")
    if h.varlen_attn and not kind.varlen:
        bad("VARLEN_ATTN is on but this reference has no document packing")
    if h.shared_specific_dims and not kind.shared_heads:
        bad("SHARED_SPECIFIC_DIMS is set but this reference has no shared-specific attention")
    if h.smear_gate and not kind.smear:
        bad("SMEAR_GATE is on but this reference has no SmearGate")
    if h.sparse_attn_gate and not kind.sparse_gate:
        bad("SPARSE_ATTN_GATE is on but this reference has no sparse attention gate")
    if not h.tie_embeddings:
        bad("the harness maps tied embeddings only")


# --- the parameter map -------------------------------------------------------------------------
@dataclasses.dataclass
class Link:
    ref: str  # reference parameter name
    index: int | None  # leading index into it (a bank / per-layer table), or the whole tensor
    ours: str  # our parameter name


def parameter_links(ours: torch.nn.Module, ref: torch.nn.Module, num_layers: int
                    ) -> tuple[list[Link], list[tuple[str, int]]]:
    """Reference -> ours, from the names in the reference sources: the 1.0611 banks (qo_bank[i] is
    layer i's Q, qo_bank[L+i] its output projection; kv_bank[i] K, kv_bank[L+i] V; the MLP banks),
    its gate / SmearGate / lane names; every other name is the same on both sides. Also the
    reference rows no layer of ours reads (lane tables of layers without lanes)."""
    L = num_layers
    our_names = dict(ours.named_parameters())
    links: list[Link] = []
    unused: list[tuple[str, int]] = []
    renames = {"smear_gate.weight": "smear.proj.weight", "smear_lambda": "smear.lam"}
    for name, p in ref.named_parameters():
        if name == "qo_bank":
            links += [Link(name, i, f"blocks.{i}.attn.c_q.weight") for i in range(L)]
            links += [Link(name, L + i, f"blocks.{i}.attn.proj.weight") for i in range(L)]
        elif name == "kv_bank":
            links += [Link(name, i, f"blocks.{i}.attn.c_k.weight") for i in range(L)]
            links += [Link(name, L + i, f"blocks.{i}.attn.c_v.weight") for i in range(L)]
        elif name == "mlp_up_bank":
            links += [Link(name, i, f"blocks.{i}.mlp.fc.weight") for i in range(L)]
        elif name == "mlp_down_bank":
            links += [Link(name, i, f"blocks.{i}.mlp.proj.weight") for i in range(L)]
        elif name in ("parallel_post_lambdas", "parallel_resid_lambdas"):
            ours_attr = "lane_post" if name == "parallel_post_lambdas" else "lane_resid"
            for i in range(p.shape[0]):
                if f"blocks.{i}.{ours_attr}" in our_names:
                    links.append(Link(name, i, f"blocks.{i}.{ours_attr}"))
                else:
                    unused.append((name, i))
        elif name.endswith(".attn.attn_gate_w"):
            links.append(Link(name, None, name.replace(".attn.attn_gate_w", ".attn.out_gate.weight")))
        else:
            links.append(Link(name, None, renames.get(name, name)))
    return links, unused


def _ref_view(ref_params: dict, link: Link) -> torch.Tensor:
    p = ref_params[link.ref]
    return p if link.index is None else p[link.index]


def check_links(ours: torch.nn.Module, ref: torch.nn.Module, links: list[Link],
                unused: list[tuple[str, int]]) -> dict:
    """Every reference element set exactly once (unused rows: never), every parameter of ours the
    source exactly once, shapes equal. Raises with the offending names; returns counts."""
    our_params = dict(ours.named_parameters())
    ref_params = dict(ref.named_parameters())
    counts = {n: torch.zeros(p.shape, dtype=torch.int32) for n, p in ref_params.items()}
    used: dict[str, int] = {}
    errors = []
    for ln in links:
        if ln.ours not in our_params:
            errors.append(f"{ln.ref}[{ln.index}] -> {ln.ours}: no such parameter of ours")
            continue
        rv = _ref_view(ref_params, ln)
        if tuple(rv.shape) != tuple(our_params[ln.ours].shape):
            errors.append(f"{ln.ref}[{ln.index}] {tuple(rv.shape)} vs {ln.ours} "
                          f"{tuple(our_params[ln.ours].shape)}")
        c = counts[ln.ref] if ln.index is None else counts[ln.ref][ln.index]
        c += 1
        used[ln.ours] = used.get(ln.ours, 0) + 1
    for name, i in unused:
        counts[name][i] -= 1000  # marked: must stay untouched
    for n, c in counts.items():
        if not bool(((c == 1) | (c == -1000)).all()):
            errors.append(f"reference {n}: {int((c == 0).sum())} elements never set, {int((c > 1).sum())} "
                          f"set more than once, {int((c < 0).sum() - (c == -1000).sum())} unread ones set")
    for n in our_params:
        if used.get(n, 0) != 1:
            errors.append(f"ours {n}: used {used.get(n, 0)} times as a source (expected 1)")
    if errors:
        raise ValueError("parameter map: " + "; ".join(errors[:12]))
    return {"links": len(links), "ref_tensors": len(ref_params), "our_tensors": len(our_params),
            "unused_rows": [f"{n}[{i}]" for n, i in unused]}


@torch.no_grad()
def copy_weights(ours: torch.nn.Module, ref: torch.nn.Module, links: list[Link]) -> None:
    """Ours -> reference. Where the reference holds a tensor in lower precision (the scripts keep
    tok_emb in bf16 when they train), ours is rounded to it first, so both hold the same values."""
    our_params = dict(ours.named_parameters())
    ref_params = dict(ref.named_parameters())
    for ln in links:
        src, dst = our_params[ln.ours], _ref_view(ref_params, ln)
        if dst.dtype != src.dtype and torch.finfo(dst.dtype).bits < torch.finfo(src.dtype).bits:
            src.copy_(src.to(dst.dtype).to(src.dtype))
        dst.copy_(src.to(dst.dtype))


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init so each component shows in the loss: the tied embedding is
    redrawn with logits of order 1 (its init gives logits ~0.05 and a loss of ~ln V whatever the
    blocks do); zero matrices (output projections) get entries of 0.5/sqrt(fan_in), other matrices
    noise of a quarter of their spread; gates and SmearGate noise of 0.5; vectors and constant
    tables (scales, gains, lane weights, skip weights) noise of 10% of their value + 0.05."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        matrix = p.ndim == 2 and min(p.shape) > 1
        if name == "tok_emb.weight":
            p.copy_(noise * (1.0 / math.sqrt(p.shape[1])))
        elif "gate" in name or "smear" in name:
            p.add_(noise * 0.5)
        elif matrix and float(p.abs().max()) == 0.0:
            p.copy_(noise * (0.5 / math.sqrt(p.shape[1])))
        elif matrix and float(p.float().std()) > 0.0:
            p.add_(noise * 0.25 * float(p.float().std()))
        else:
            p.add_(noise * (0.1 * p.abs() + 0.05))


# --- batches -------------------------------------------------------------------------------------
def make_batch(vocab: int, rows: int, seq: int, seed: int, mean_doc: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, seq] inputs and next-token targets from one random token stream: every row starts
    with BOS, and BOS starts a new document with probability 1/mean_doc inside the rows."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(2, vocab, (rows * seq + 1,), generator=g)
    stream[torch.rand(rows * seq + 1, generator=g) < 1.0 / mean_doc] = DOC_BOS_ID
    stream[torch.arange(rows + 1) * seq] = DOC_BOS_ID
    return stream[:-1].view(rows, seq).clone(), stream[1:].view(rows, seq).clone()


# --- running the two models ----------------------------------------------------------------------
@dataclasses.dataclass
class Sides:
    ours: torch.nn.Module
    ref: torch.nn.Module
    kind: RefKind
    mod: types.ModuleType
    rh: object
    varlen: bool
    seq: int
    autocast: bool
    muon_fp32: bool = False


def _autocast(device: torch.device, on: bool):
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_recurrence(s: Sides, on: bool) -> None:
    s.ours.set_recurrence(on)
    s.ref.looping_active = bool(on) and s.rh.num_loops > 0


def loss_ours(s: Sides, x, y, cu) -> torch.Tensor:
    with _autocast(x.device, s.autocast):
        if s.varlen:
            return s.ours(x, y, cu_seqlens=cu, max_seqlen=s.seq)
        return s.ours(x, y)


def reference_loss(model: torch.nn.Module, x, y, cu, varlen: bool, seq: int, autocast: bool) -> torch.Tensor:
    with _autocast(x.device, autocast):
        if varlen:  # the 1.0611 script packs the whole micro-batch into one row
            return model(x.reshape(1, -1), y.reshape(1, -1), cu_seqlens=cu, max_seqlen=seq)
        return model(x, y)


def loss_ref(s: Sides, x, y, cu) -> torch.Tensor:
    return reference_loss(s.ref, x, y, cu, s.varlen, s.seq, s.autocast)


def set_ref_kernels(ref: torch.nn.Module, on: bool) -> None:
    """The 1.0611 reference's Triton kernels (fused MLP, fused softcapped CE) on or off."""
    if hasattr(ref, "fused_ce_enabled"):
        ref.fused_ce_enabled = on
    for b in getattr(ref, "blocks", []):
        if hasattr(b.mlp, "use_fused"):
            b.mlp.use_fused = on


@contextlib.contextmanager
def _no_cuda_streams():
    """The 1.0611 Optimizers make a CUDA stream in __init__; on a CPU a placeholder stands in."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.Stream
    torch.cuda.Stream = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.Stream = saved


def step_ours(s: Sides, h, momentum: float) -> None:
    """Our trainer's step after its backward: LR scale 1, momentum, sync_and_clip, step."""
    opt = build_optimizers(h, s.ours)
    opt.set_lr_scale(1.0)
    opt.set_muon_momentum(momentum)
    opt.sync_and_clip(h.grad_clip_norm)
    opt.step()
    opt.zero_grad()


def step_ref(s: Sides, momentum: float) -> None:
    """The reference's step_fn after its backward: momentum, LR = base, clip, Optimizers.step."""
    with _no_cuda_streams():
        ropt = s.mod.Optimizers(s.rh, s.ref)
    for group in ropt.optimizer_muon.param_groups:
        group["momentum"] = momentum
    for opt in ropt.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * 1.0
    if s.rh.grad_clip_norm > 0:
        params = [p for p in s.ref.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, s.rh.grad_clip_norm)
    on_cuda = next(s.ref.parameters()).is_cuda
    with _bf16_as_fp32(s.muon_fp32):
        if hasattr(ropt, "_aux_stream") and not on_cuda:
            # its step() without the CUDA side stream: the same three optimizers, the same order
            ropt.optimizer_tok.step()
            ropt.optimizer_scalar.step()
            ropt.optimizer_muon.step()
            ropt.zero_grad_all()
        elif "distributed" in inspect.signature(ropt.step).parameters:
            ropt.step(distributed=False)
        else:
            ropt.step()


@contextlib.contextmanager
def _bf16_as_fp32(on: bool):
    """--ref-muon-fp32 (a diagnostic): ``Tensor.bfloat16()`` gives fp32 during the reference's step,
    so its own Muon code (gradient cast, momentum, Newton-Schulz) runs in fp32; what is left of the
    step difference is then our code against theirs, not bf16 rounding (the 1.0810 / PR #1774 Muon
    still stores the update in a bf16 buffer)."""
    if not on:
        yield
        return
    saved = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.float()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = saved


# --- tracing (locating a mismatch) ---------------------------------------------------------------
def _trace_modules(model: torch.nn.Module, ours: bool) -> dict[str, torch.nn.Module]:
    mods = {"tok_emb": model.tok_emb}
    for i, b in enumerate(model.blocks):
        mods[f"blocks.{i}"] = b
        mods[f"blocks.{i}.attn"] = b.attn
        mods[f"blocks.{i}.mlp"] = b.mlp
    if ours and model.smear is not None:
        mods["smear"] = model.smear
    return mods


@contextlib.contextmanager
def record_calls(model: torch.nn.Module, ours: bool, log: list):
    """Append (name, output) for every call of the embedding, the blocks, attention and MLP modules,
    and the final normed hidden states (ours: lm_head's input; the reference: final_norm's output)."""
    handles = []
    for name, m in _trace_modules(model, ours).items():
        handles.append(m.register_forward_hook(
            lambda _m, _i, out, name=name: log.append((name, out.detach().float().clone()))))
    if ours:
        handles.append(model.lm_head.register_forward_pre_hook(
            lambda _m, inp: log.append(("final_hidden", inp[0].detach().float().clone()))))
    else:
        handles.append(model.final_norm.register_forward_hook(
            lambda _m, _i, out: log.append(("final_hidden", out.detach().float().clone()))))
    try:
        yield log
    finally:
        for hd in handles:
            hd.remove()


@dataclasses.dataclass
class TraceRow:
    name: str  # "blocks.4.attn#0": module and call number, or a parameter name (gradients)
    diff: float  # max |ours - reference|
    scale: float  # max |reference|
    note: str = ""  # why there is no comparison

    @property
    def rel(self) -> float:
        return math.inf if self.note else self.diff / max(self.scale, 1e-30)


def trace_forward(s: Sides, x, y, cu) -> list[TraceRow]:
    """Activation differences, call by call, in our call order: the first row over tolerance names
    the component where the two models part (``first_divergence``)."""
    a: list = []
    b: list = []
    with torch.no_grad():
        with record_calls(s.ours, True, a):
            loss_ours(s, x, y, cu)
        with record_calls(s.ref, False, b):
            loss_ref(s, x, y, cu)
    seen: dict[str, int] = {}
    refs: dict[tuple[str, int], torch.Tensor] = {}
    for name, t in b:
        k = seen.get(name, 0)
        refs[(name, k)] = t
        seen[name] = k + 1
    seen = {}
    rows = []
    for name, t in a:
        k = seen.get(name, 0)
        seen[name] = k + 1
        r = refs.get((name, k))
        if r is None:
            rows.append(TraceRow(f"{name}#{k}", math.nan, math.nan, "no reference call (not hooked there)"))
            continue
        t2, r2 = t.reshape(-1, t.shape[-1]), r.reshape(-1, r.shape[-1])
        if t2.shape != r2.shape:
            rows.append(TraceRow(f"{name}#{k}", math.nan, math.nan,
                                 f"shapes {tuple(t.shape)} vs {tuple(r.shape)}"))
            continue
        rows.append(TraceRow(f"{name}#{k}", float((t2 - r2).abs().max()), float(r2.abs().max())))
    return rows


def final_hidden_rel(s: Sides, x, y, cu) -> float:
    """||h ours - h reference|| / ||h reference|| of the final normed hidden states (the head's
    input), over the whole batch: a sharper test than the mean loss, where small differences of
    opposite sign cancel."""
    a: list = []
    b: list = []
    with torch.no_grad():
        h1 = s.ours.lm_head.register_forward_pre_hook(lambda _m, inp: a.append(inp[0].detach().float()))
        h2 = s.ref.final_norm.register_forward_hook(lambda _m, _i, out: b.append(out.detach().float()))
        try:
            loss_ours(s, x, y, cu)
            loss_ref(s, x, y, cu)
        finally:
            h1.remove()
            h2.remove()
    ho, hr = a[-1].reshape(-1, a[-1].shape[-1]), b[-1].reshape(-1, b[-1].shape[-1])
    return float((ho - hr).double().norm() / hr.double().norm().clamp_min(1e-30))


def first_divergence(rows: list[TraceRow], tol: float) -> TraceRow | None:
    """The first compared call whose relative difference exceeds ``tol``."""
    return next((r for r in rows if not r.note and r.rel > tol), None)


def trace_grads(s: Sides, links: list[Link]) -> list[TraceRow]:
    """Gradient differences of every mapped parameter, worst first (before clipping and steps)."""
    ref_params = dict(s.ref.named_parameters())
    our_params = dict(s.ours.named_parameters())
    rows = []
    for ln in links:
        go = our_params[ln.ours].grad
        gr = ref_params[ln.ref].grad
        if gr is not None and ln.index is not None:
            gr = gr[ln.index]
        if go is None or gr is None:
            rows.append(TraceRow(ln.ours, math.nan, math.nan,
                                 f"gradient missing (ours: {go is not None}, reference: {gr is not None})"))
            continue
        go, gr = go.float(), gr.float()
        rows.append(TraceRow(ln.ours, float((go - gr).abs().max()), float(gr.abs().max())))
    return sorted(rows, key=lambda r: -r.rel)


def trace_table(rows: list[TraceRow], what: str, limit: int | None = None) -> list[str]:
    lines = [f"| {what} | max abs diff | max abs (reference) | relative |", "| --- | --- | --- | --- |"]
    for r in rows[:limit]:
        lines.append(f"| {r.name} | {r.note} | | |" if r.note else
                     f"| {r.name} | {r.diff:.3e} | {r.scale:.3e} | {r.rel:.3e} |")
    return lines


# --- one comparison ------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    weights: str
    recurrence: bool
    loss_ours: float
    loss_ref: float
    loss_oracle: float | None = None  # the reference in fp32, no autocast (bf16 runs only)
    hidden_rel: float | None = None  # relative L2 difference of the final hidden states
    step_ours: float | None = None
    step_ref: float | None = None
    dw: dict = dataclasses.field(default_factory=dict)  # group -> (max|dW ours|, max|dW ref|, max|diff|)
    unused_grad_zero: bool | None = None
    trace: list = dataclasses.field(default_factory=list)  # TraceRow per module call (--trace)
    grad_trace: list = dataclasses.field(default_factory=list)  # TraceRow per parameter (--trace)

    @staticmethod
    def rel(a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        return abs(a - b) / max(abs(b), 1e-30)


def _onoff(on: bool) -> str:
    return "on" if on else "off"


@dataclasses.dataclass
class Report:
    preset: str
    ref_path: str
    device: str
    precision: str
    tol_forward: float
    tol_step: float
    tol_hidden: float | None
    cases: list
    info: dict

    def case_ok(self, c: Case) -> bool:
        ok = Case.rel(c.loss_ours, c.loss_ref) <= self.tol_forward
        if self.tol_hidden is not None and c.hidden_rel is not None:
            ok = ok and c.hidden_rel <= self.tol_hidden
        if c.step_ours is not None:
            ok = ok and Case.rel(c.step_ours, c.step_ref) <= self.tol_step
        if c.unused_grad_zero is False:
            ok = False
        return ok

    @property
    def passed(self) -> bool:
        return all(self.case_ok(c) for c in self.cases)

    def table(self) -> str:
        parts = Path(self.ref_path).parts
        ref = "/".join(parts[-2:])
        lines = ["| preset | reference | weights | recurrence | loss ours | loss reference | abs diff "
                 "| relative | hidden L2 rel | step-2 loss ours | step-2 loss reference | step-2 relative "
                 "| pass |",
                 "|" + " --- |" * 13]
        for c in self.cases:
            r2 = Case.rel(c.step_ours, c.step_ref)
            step = ("| - | - | - " if c.step_ours is None else
                    f"| {c.step_ours:.6f} | {c.step_ref:.6f} | {r2:.2e} ")
            verdict = "PASS" if self.case_ok(c) else "FAIL"
            lines.append(f"| {self.preset} | {ref} | {c.weights} | {_onoff(c.recurrence)} "
                         f"| {c.loss_ours:.6f} | {c.loss_ref:.6f} | {abs(c.loss_ours - c.loss_ref):.2e} "
                         f"| {Case.rel(c.loss_ours, c.loss_ref):.2e} | {c.hidden_rel:.2e} {step}"
                         f"| {verdict} |")
        return "\n".join(lines)

    def dw_table(self) -> str:
        lines = ["| weights | recurrence | group | max abs dW ours | max abs dW reference | "
                 "max abs (dW ours - dW ref) | L2 (dW ours - dW ref) / L2 dW ref |", "|" + " --- |" * 7]
        for c in self.cases:
            for g, (a, b, d, rel) in c.dw.items():
                lines.append(f"| {c.weights} | {_onoff(c.recurrence)} | {g} | {a:.3e} | {b:.3e} | {d:.3e} "
                             f"| {rel:.2e} |")
        return "\n".join(lines)

    def oracle_table(self) -> str:
        lines = ["| weights | recurrence | loss reference fp32 | ours vs fp32 | reference bf16 vs fp32 |",
                 "| --- | --- | --- | --- | --- |"]
        for c in self.cases:
            if c.loss_oracle is not None:
                lines.append(f"| {c.weights} | {_onoff(c.recurrence)} | {c.loss_oracle:.6f} "
                             f"| {Case.rel(c.loss_ours, c.loss_oracle):.2e} "
                             f"| {Case.rel(c.loss_ref, c.loss_oracle):.2e} |")
        return "\n".join(lines)

    def markdown(self, command: str) -> str:
        i = self.info
        if self.precision == "bf16":
            prec = "bf16 (autocast; the reference in its training dtypes: .bfloat16(), restore_fp32_params)"
        else:
            prec = "fp32 (no autocast)"
        notes = [f"reference Triton kernels {i['ref_kernels']}", "torch.compile off"]
        if i["muon_fp32"]:
            notes.append("reference Muon made fp32 (--ref-muon-fp32, a diagnostic)")
        if i["rewritten"]:
            notes.append(f"{i['rewritten']} f-string line(s) of the reference rewritten for Python "
                         f"{sys.version.split()[0]} (nested quotes, same meaning)")
        unused = i["map"]["unused_rows"]
        out = [f"# Parity: PRESET={self.preset} vs {self.ref_path}", "",
               f"Command: `{command}`", "",
               f"Device: {i['device_name']}; torch {i['torch']}; precision {prec}; attention backend "
               f"{i['attention']}; flash_attn_interface from {i['fa_source']}; " + "; ".join(notes) + ".", "",
               f"Shape: {i['shape']}; batch {i['rows']} x {i['seq']} tokens, {i['docs']} documents "
               f"(cu_seqlens {'passed to both' if i['varlen'] else 'not used'}); "
               f"Muon momentum {i['momentum']}, LR scale 1, grad clip {i['clip']}.", "",
               f"Tolerance (relative, on the loss): forward {self.tol_forward:g}, after one step "
               f"{self.tol_step:g}; final hidden states (relative L2): "
               f"{'not judged' if self.tol_hidden is None else format(self.tol_hidden, 'g')}. "
               f"Parameter map: {i['map']['links']} links onto {i['map']['ref_tensors']} "
               f"reference tensors from {i['map']['our_tensors']} of ours, every element set once"
               + (f"; reference rows no layer reads (their gradient checked zero): {', '.join(unused)}"
                  if unused else "") + ".", "",
               self.table(), ""]
        if any(c.loss_oracle is not None for c in self.cases):
            out += ["Noise floor: the reference's loss in fp32 (no autocast), same weights and batch.", "",
                    self.oracle_table(), ""]
        if any(c.dw for c in self.cases):
            out += ["Updates of the one step, by parameter group (ours' groups; the reference's banks and "
                    "lane tables split by layer):", "", self.dw_table(), ""]
        for c in self.cases:
            if c.trace:
                first = first_divergence(c.trace, self.tol_forward)
                out += [f"Trace, weights {c.weights}, recurrence {_onoff(c.recurrence)}: first call over "
                        f"{self.tol_forward:g}: {first.name if first else 'none'}", ""]
                out += trace_table(c.trace, "call (ours' order)") + [""]
            if c.grad_trace:
                out += ["Gradients before clipping, worst 25:", ""]
                out += trace_table(c.grad_trace, "parameter", 25) + [""]
        out.append(f"Result: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(out) + "\n"


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def _update_stats(s: Sides, links: list[Link], before_o: dict, before_r: dict,
                  groups: dict[str, str]) -> dict:
    """Per group: max |dW ours|, max |dW reference|, max |dW ours - dW reference|, and the L2 norm of
    the difference over the L2 norm of the reference's update (Adam's first step is about
    -lr * sign(g): where a gradient is ~0 its sign is rounding noise, so the max difference can reach
    2 lr while the updates agree; the L2 ratio shows how much of the update differs)."""
    after_o, after_r = _snapshot(s.ours), _snapshot(s.ref)
    stats: dict[str, list[float]] = {}
    for ln in links:
        do = after_o[ln.ours] - before_o[ln.ours]
        rb, ra = before_r[ln.ref], after_r[ln.ref]
        dr = (ra - rb) if ln.index is None else (ra[ln.index] - rb[ln.index])
        st = stats.setdefault(groups[ln.ours], [0.0, 0.0, 0.0, 0.0, 0.0])
        st[0] = max(st[0], float(do.abs().max()))
        st[1] = max(st[1], float(dr.abs().max()))
        st[2] = max(st[2], float((do - dr).abs().max()))
        st[3] += float((do - dr).double().pow(2).sum())
        st[4] += float(dr.double().pow(2).sum())
    return {g: (a, b, d, math.sqrt(sd) / max(math.sqrt(sr), 1e-30)) for g, (a, b, d, sd, sr) in stats.items()}


def _unused_grads_zero(s: Sides, unused: list[tuple[str, int]]) -> bool | None:
    if not unused:
        return None
    ref_params = dict(s.ref.named_parameters())
    for name, i in unused:
        g = ref_params[name].grad
        if g is not None and float(g[i].abs().max()) != 0.0:
            return False
    return True


def _ref_model(ref_base: torch.nn.Module, dev: torch.device, precision: str, mod) -> torch.nn.Module:
    """A fresh copy of the reference model on ``dev`` in the dtypes its trainer gives it (bf16:
    ``.bfloat16()`` then its ``restore_fp32_params``, which leaves tok_emb in bf16), train mode."""
    ref = copy.deepcopy(ref_base).to(dev)
    if precision == "bf16":
        ref = ref.bfloat16()
        mod.restore_fp32_params(ref)
    return ref.train()


def build_hparams(preset: str, tiny: bool, overrides: dict[str, str] | None) -> Hyperparameters:
    env = {"PRESET": preset}
    if tiny:
        env.update(tiny_overrides(Hyperparameters.from_env(env)))
    env.update(overrides or {})
    return Hyperparameters.from_env(env)


@contextlib.contextmanager
def _cheap_init():
    """The reference's own init is overwritten entirely (check_links proves it): skip its QR-based
    orthogonal init while it is built (seconds on a busy CPU)."""
    saved = torch.nn.init.orthogonal_
    torch.nn.init.orthogonal_ = lambda t, gain=1.0, generator=None: t
    try:
        yield
    finally:
        torch.nn.init.orthogonal_ = saved


def run_parity(preset: str, ref_path: str | Path, device: str = "cpu", tiny: bool = False,
               overrides: dict[str, str] | None = None, rows: int | None = None, precision: str | None = None,
               weights: tuple[str, ...] = ("init", "perturbed"), recurrence: tuple[bool, ...] = (False, True),
               step: bool = True, trace: bool = False, ref_kernels: str = "auto", seed: int = 1234,
               perturb: tuple[str, float] | None = None, tol_forward: float | None = None,
               tol_step: float | None = None, oracle: bool | None = None, mean_doc: int | None = None,
               ref_muon_fp32: bool = False, ref_overrides: dict[str, object] | None = None) -> Report:
    """Compare PRESET=``preset`` with the reference script at ``ref_path``; see the module docstring.

    Deliberate mismatches (the tests check that the comparison then fails): ``perturb=(name,
    delta)`` adds ``delta`` to every element of our parameter ``name`` after the copy;
    ``ref_overrides`` sets attributes of the reference's Hyperparameters only (e.g. its muon_wd)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device here")
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    if precision not in TOLERANCES:
        raise ValueError(f"--precision {precision!r}: expected fp32 or bf16")
    if dev.type == "cuda" and precision != "bf16":
        raise ValueError("--precision fp32 on CUDA: our model keeps a bf16 residual stream on CUDA; use bf16")
    tf, ts = TOLERANCES[precision]
    if ref_muon_fp32 and precision == "fp32":
        ts = TOL_STEP_MUON_FP32
    tol_forward = tf if tol_forward is None else tol_forward
    tol_step = ts if tol_step is None else tol_step
    oracle = (precision == "bf16") if oracle is None else oracle
    h = build_hparams(preset, tiny, overrides)
    h.compile = False
    ref_path = str(ref_path)
    if ref_kernels not in ("auto", "on", "off"):
        raise ValueError(f"--ref-kernels {ref_kernels!r}: expected auto, on or off")
    kernels = ref_kernels == "on" or (ref_kernels == "auto" and dev.type == "cuda")
    settings = reference_settings(h, fused=kernels)
    mod = load_reference(ref_path, reference_env(settings))
    kind = reference_kind(mod)
    check_compatible(h, kind, ref_path)
    if kernels and getattr(mod, "PARITY_TRITON_STANDIN", False):
        raise RuntimeError("--ref-kernels on: Triton is not installed here")
    rh = reference_hparams(mod, settings)
    for k, v in (ref_overrides or {}).items():
        if not hasattr(rh, k):
            raise ValueError(f"ref_overrides: the reference has no hyperparameter {k!r}")
        setattr(rh, k, v)
    if hasattr(mod, "BOS_ID"):
        mod.BOS_ID = DOC_BOS_ID  # set by the 1.0611 data loader, which the harness does not run
    backend = select_attention_backend(dev)

    seq = h.train_seq_len
    rows = rows or (4 if tiny or dev.type == "cpu" else 8)
    mean_doc = mean_doc or max(seq // 3, 8)
    x1, y1 = make_batch(h.vocab_size, rows, seq, seed, mean_doc)
    x2, y2 = make_batch(h.vocab_size, rows, seq, seed + 1, mean_doc)
    x1, y1, x2, y2 = (t.to(dev) for t in (x1, y1, x2, y2))
    varlen = bool(h.varlen_attn)
    cu1 = doc_cu_seqlens(x1) if varlen else None
    cu2 = doc_cu_seqlens(x2) if varlen else None
    momentum = muon_momentum_at(h, 0)

    torch.manual_seed(h.seed)
    base = GPT(h)
    torch.manual_seed(h.seed + 1)
    with _cheap_init(), torch.no_grad():
        ref_base = mod.GPT(rh)
    cases: list[Case] = []
    map_info: dict = {}
    kernel_note = "on" if kernels else "off"
    if kernels and ref_kernels == "auto":  # one forward + backward with them first: off if they fail
        try:
            probe = _ref_model(ref_base, dev, precision, mod)
            set_ref_kernels(probe, True)
            reference_loss(probe, x1, y1, cu1, varlen, seq, precision == "bf16").backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        except Exception as e:  # noqa: BLE001 - whatever stops the Triton kernels on this machine
            kernels, kernel_note = False, f"off (they failed here: {type(e).__name__}: {str(e)[:160]})"
        probe = None
    for wname in weights:
        for rec in recurrence:
            ours = copy.deepcopy(base)
            if wname == "perturbed":
                perturb_weights(ours, seed + 7)
            elif wname != "init":
                raise ValueError(f"weights {wname!r}: expected init or perturbed")
            ours = ours.to(dev).train()
            ref = _ref_model(ref_base, dev, precision, mod)
            set_ref_kernels(ref, kernels)
            links, unused = parameter_links(ours, ref, h.num_layers)
            map_info = check_links(ours, ref, links, unused)
            copy_weights(ours, ref, links)
            if perturb is not None:
                with torch.no_grad():
                    dict(ours.named_parameters())[perturb[0]].add_(perturb[1])
            s = Sides(ours, ref, kind, mod, rh, varlen, seq, autocast=precision == "bf16",
                      muon_fp32=ref_muon_fp32)
            set_recurrence(s, rec)
            lo = loss_ours(s, x1, y1, cu1)
            lr_ = loss_ref(s, x1, y1, cu1)
            case = Case(wname, rec, float(lo.detach()), float(lr_.detach()))
            case.hidden_rel = final_hidden_rel(s, x1, y1, cu1)
            if oracle:  # the reference in fp32: how far bf16 alone moves each side
                o = copy.deepcopy(ref).float()
                set_ref_kernels(o, False)
                with torch.no_grad():
                    case.loss_oracle = float(reference_loss(o, x1, y1, cu1, varlen, seq, autocast=False))
                del o
            if trace:
                case.trace = trace_forward(s, x1, y1, cu1)
            if step:
                groups = {n: g for g, items in split_params(ours).items() for n, _p in items}
                before_o, before_r = _snapshot(ours), _snapshot(ref)
                lo.backward()
                lr_.backward()
                case.unused_grad_zero = _unused_grads_zero(s, unused)
                if trace:  # gradients before clipping and the optimizers
                    case.grad_trace = trace_grads(s, links)
                step_ours(s, h, momentum)
                step_ref(s, momentum)
                case.dw = _update_stats(s, links, before_o, before_r, groups)
                with torch.no_grad():
                    case.step_ours = float(loss_ours(s, x2, y2, cu2))
                    case.step_ref = float(loss_ref(s, x2, y2, cu2))
            cases.append(case)
            del ours, ref, s
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    fa = getattr(mod, "PARITY_FA_MODULE", None) or sys.modules.get("flash_attn_interface")
    fa_src = getattr(fa, "__file__", "?") or "?"
    if Path(fa_src).resolve().parent == SHIMS.resolve():
        fa_src = "bench/shims (our attention backends)"
    info = {
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "attention": attention_backend() or backend, "fa_source": fa_src,
        "ref_kernels": kernel_note + (" (Triton stand-in at import)"
                                      if getattr(mod, "PARITY_TRITON_STANDIN", False) else ""),
        "rewritten": getattr(mod, "PARITY_REWRITTEN_FSTRINGS", 0), "muon_fp32": ref_muon_fp32,
        "shape": (f"{h.num_layers} layers x {h.model_dim}, {h.num_heads}/{h.num_kv_heads} heads, "
                  f"MLP {h.mlp_mult}x, "
                  f"vocab {h.vocab_size}, loops {h.loop_start}..{h.loop_end} x{h.num_loops}, parallel from "
                  f"{h.parallel_start_layer} ({h.parallel_lanes} lane{'s' if h.parallel_lanes > 1 else ''})"
                  + (f", shared head dims {h.shared_specific_dims}" if h.shared_specific_dims else "")
                  + (", SmearGate" if h.smear_gate else "")
                  + (", sparse attention gate" if h.sparse_attn_gate else "")
                  + (" (--tiny)" if tiny else "")),
        "rows": rows, "seq": seq, "docs": int((x1 == DOC_BOS_ID).sum()), "varlen": varlen,
        "momentum": momentum, "clip": h.grad_clip_norm, "map": map_info,
    }
    return Report(preset, ref_path, str(dev), precision, tol_forward, tol_step, TOL_HIDDEN[precision],
                  cases, info)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="our PRESET (pr1855, pr1493, pr1774, ...)")
    ap.add_argument("--ref", required=True, help="the reference train_gpt.py")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="width 128, 4/2 heads, vocab 512, seq 64, 5 layers "
                    "fewer (CPU); the preset's switches and the structure of its layer schedule kept")
    ap.add_argument("--precision", choices=["fp32", "bf16"],
                    help="default: fp32 on CPU, bf16 autocast on CUDA")
    ap.add_argument("--rows", type=int, help="sequences in the batch (default 4 on CPU / tiny, 8 on CUDA)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="our env overrides (the reference follows)")
    ap.add_argument("--weights", default="init,perturbed", help="init, perturbed or both (comma-separated)")
    ap.add_argument("--recurrence", default="off,on", help="off, on or both")
    ap.add_argument("--no-step", action="store_true", help="forward only")
    ap.add_argument("--trace", action="store_true", help="activation and gradient differences, call by call")
    ap.add_argument("--ref-kernels", default="auto", choices=["auto", "on", "off"],
                    help="the 1.0611 reference's Triton kernels (auto: on CUDA, off if a probe step fails)")
    ap.add_argument("--ref-muon-fp32", action="store_true",
                    help="diagnostic: the reference's Muon in fp32 (its bf16 casts made fp32), to test the "
                    "optimizer logic to fp32 rounding on a CPU")
    ap.add_argument("--tol-forward", type=float)
    ap.add_argument("--tol-step", type=float)
    ap.add_argument("--threads", type=int, help="CPU threads (default: 1 with --tiny: a toy model runs "
                    "fastest on one thread, by far on a busy machine; else torch's default)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", help="write the markdown report here")
    a = ap.parse_args(argv)
    overrides = {}
    for kv in a.set:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--set {kv!r}: expected KEY=VALUE")
        overrides[k] = v
    if a.threads or a.tiny:
        torch.set_num_threads(a.threads or 1)
    rec = tuple({"off": False, "on": True}[r.strip()] for r in a.recurrence.split(",") if r.strip())
    weights = tuple(w.strip() for w in a.weights.split(",") if w.strip())
    rep = run_parity(a.preset, a.ref, device=a.device, tiny=a.tiny, overrides=overrides, rows=a.rows,
                     precision=a.precision, weights=weights, recurrence=rec, step=not a.no_step,
                     trace=a.trace, ref_kernels=a.ref_kernels, seed=a.seed,
                     tol_forward=a.tol_forward, tol_step=a.tol_step, ref_muon_fp32=a.ref_muon_fp32)
    args = argv if argv is not None else sys.argv[1:]
    command = "python bench/parity.py " + " ".join(shlex.quote(x) for x in args)
    md = rep.markdown(command)
    print(md, flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md)
    return 0 if rep.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
