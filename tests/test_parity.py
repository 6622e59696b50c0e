"""Parity with the reference record scripts (bench/parity.py), on the CPU in float32 at --tiny size.

Reads the reference trainers from the shared folder beside the checkout (``../shared/reference``,
or ``$PGOLF_SHARED/reference``); skipped with a message when it is absent. Each preset's GPT and the
reference's get the same weights (ours, perturbed off their init so every component contributes) and
the same batch; the losses, the final hidden states and the loss after one optimizer step must agree.
Deliberate differences (one parameter of ours moved, one hyperparameter of the reference changed)
must make the comparison fail, and the trace must name the component where the models part.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import parity  # noqa: E402

REFERENCES = {
    "pr1855": "sota_1.0611/train_gpt.py",
    "pr1493": "r1493_1.0810/train_gpt.decoded.py",
    "pr1774": "seed1774_1.0981/train_gpt.py",
}


def _shared_reference() -> Path | None:
    roots = [Path(os.environ["PGOLF_SHARED"])] if os.environ.get("PGOLF_SHARED") else []
    roots += [REPO / "shared", REPO.parent / "shared", REPO.parent.parent / "shared"]
    for root in roots:
        if all((root / "reference" / rel).is_file() for rel in REFERENCES.values()):
            return root / "reference"
    return None


SHARED = _shared_reference()
pytestmark = pytest.mark.skipif(
    SHARED is None, reason="reference trainers not found (../shared/reference beside the checkout, or "
    "$PGOLF_SHARED/reference): parity needs the record scripts")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Toy models on a busy 2-core machine: one intra-op thread is ~10x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ref(preset: str) -> str:
    return str(SHARED / REFERENCES[preset])


@pytest.mark.parametrize("preset", list(REFERENCES))
def test_same_loss_and_step_as_the_reference(preset):
    """Init and perturbed weights, recurrence off and on: the loss to 1e-5, the final hidden states
    to 1e-5 (relative L2), the loss after one step of each side's own optimizers to 2e-4 (the
    reference's Muon runs in bf16), every reference parameter set exactly once."""
    rep = parity.run_parity(preset, ref(preset), tiny=True)
    assert len(rep.cases) == 4
    assert rep.passed, rep.markdown("test")
    for c in rep.cases:
        assert c.step_ours is not None and c.step_ours != c.loss_ours  # the step moved the model
    assert rep.info["map"]["links"] > 0
    if preset == "pr1855":  # lane tables: rows of layers without lanes are unread, and checked so
        assert rep.info["map"]["unused_rows"] and all(c.unused_grad_zero for c in rep.cases)
        assert rep.info["varlen"] and rep.info["docs"] > rep.info["rows"]  # packed documents


@pytest.mark.parametrize("preset", list(REFERENCES))
def test_optimizer_step_matches_with_the_reference_muon_in_fp32(preset):
    """With the reference's own Muon code run in fp32 the step agrees to 1e-4 and the Muon update
    to bf16 storage rounding: what differed before was bf16 arithmetic, not the optimizer."""
    rep = parity.run_parity(preset, ref(preset), tiny=True, weights=("perturbed",), recurrence=(True,),
                            ref_muon_fp32=True)
    assert rep.tol_step == parity.TOL_STEP_MUON_FP32
    assert rep.passed, rep.markdown("test")
    _ours, _theirs, _maxdiff, l2 = rep.cases[0].dw["matrix"]
    assert l2 < 5e-3


@pytest.mark.parametrize("preset, name, delta, first_call", [
    ("pr1855", "blocks.4.lane_post", 1e-2, "blocks.5.attn#0"),  # two-lane weights (first lane layer 4)
    ("pr1855", "smear.lam", 1e-2, "blocks.0.attn#0"),  # SmearGate
    ("pr1855", "blocks.1.attn.out_gate.weight", 1e-2, "blocks.1.attn#0"),  # sparse attention gate
    ("pr1855", "skip_gates", 1e-2, None),  # U-Net skip gates
    ("pr1774", "blocks.2.attn.c_q.weight", 1e-3, "blocks.2.attn#0"),  # shared-specific Q
    ("pr1493", "blocks.5.mlp_scale", 1e-2, "blocks.5#0"),  # one-lane parallel block's MLP scale
    ("pr1493", "blocks.3.attn.q_gain", 1e-2, "blocks.3.attn#0"),  # 0.2% of one layer's QK gain
])
def test_a_moved_weight_fails_and_the_trace_names_it(preset, name, delta, first_call):
    rep = parity.run_parity(preset, ref(preset), tiny=True, weights=("perturbed",), recurrence=(True,),
                            step=False, trace=True, perturb=(name, delta))
    assert not rep.passed
    c = rep.cases[0]
    assert c.hidden_rel > rep.tol_hidden
    first = parity.first_divergence(c.trace, 1e-4)
    assert first is not None
    if first_call is not None:
        assert first.name == first_call
    assert "FAIL" in rep.markdown("test")


@pytest.mark.parametrize("override", [{"muon_wd": 0.0}, {"embed_wd": 0.0}])
def test_a_different_optimizer_setting_fails_the_step(override):
    """Only the reference's weight decay changed: the forward agrees, the step does not."""
    rep = parity.run_parity("pr1855", ref("pr1855"), tiny=True, weights=("perturbed",), recurrence=(True,),
                            ref_muon_fp32=True, ref_overrides=override)
    c = rep.cases[0]
    assert parity.Case.rel(c.loss_ours, c.loss_ref) <= rep.tol_forward
    assert parity.Case.rel(c.step_ours, c.step_ref) > rep.tol_step
    assert not rep.passed


def test_the_parameter_map_covers_every_reference_element():
    """Dropping one link leaves reference elements unset: the map check names them."""
    h = parity.build_hparams("pr1855", True, None)
    mod = parity.load_reference(ref("pr1855"), parity.reference_env(parity.reference_settings(h, False)))
    rh = parity.reference_hparams(mod, parity.reference_settings(h, False))
    ours, theirs = parity.GPT(h), mod.GPT(rh)
    links, unused = parity.parameter_links(ours, theirs, h.num_layers)
    info = parity.check_links(ours, theirs, links, unused)
    assert info["links"] == len(links) == len(dict(ours.named_parameters()))
    qo = [ln for ln in links if ln.ref == "qo_bank"]
    assert {ln.index for ln in qo} == set(range(2 * h.num_layers))
    assert qo[h.num_layers].ours == "blocks.0.attn.proj.weight"  # qo_bank[L] is layer 0's output proj
    with pytest.raises(ValueError, match="qo_bank: .* never set"):
        parity.check_links(ours, theirs, [ln for ln in links if ln is not qo[0]], unused)


def test_incompatible_preset_is_one_clear_error():
    with pytest.raises(ValueError, match="two-lane residuals only; PARALLEL_LANES=1"):
        parity.run_parity("pr1855", ref("pr1855"), tiny=True, overrides={"PARALLEL_LANES": "1"}, step=False)


def test_nested_fstring_quotes_rewritten_for_older_python():
    line = '\tlog(f"  {cat}: {", ".join(sorted(c[cat]))} {{x}}")\n'
    fixed = parity._nested_quotes_to_single(line)
    assert fixed == "\tlog(f\"  {cat}: {', '.join(sorted(c[cat]))} {{x}}\")\n"
    assert parity._nested_quotes_to_single('x = f"{a}" + "{b}"') == 'x = f"{a}" + "{b}"'
