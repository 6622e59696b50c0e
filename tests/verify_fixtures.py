"""Synthetic records folders for verify's tests, assembled on disk from one scaffold.

Each folder is a stand-in record with one seed: a train_gpt.py that verify scans and never runs, the
seed's log in the challenge's format, a submission.json that agrees with it and a README. The
train_gpt.py is the scaffold below (load the split, train, quantize, a plain scored pass, main) around
the one pattern a case is about; ``tests/verify_cases.py`` lists the cases, each with only what
differs, and its ``build_case(tmp_path, "c3_slot")`` writes one folder and returns its path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest_verify import TRAIN_AND_QUANTIZE

DATA = Path(__file__).resolve().parent / "fixtures" / "verify"  # binary files some cases ship
MODEL_BYTES = 15_000_000
SLIDING_SCORE = "final_int6_sliding_window val_loss:2.40000000 val_bpb:1.10000000 eval_time:90000ms"


@dataclass(frozen=True)
class Case:
    """What one record adds to the scaffold; left at their defaults the fields give a plain record."""

    pattern: str = ""  # the function(s) the case is about, placed between eval_val() and main()
    before_quantize: str = ""  # a line of main() after training, before quantize()
    artifact: str = "q"  # what main() saves as final_model.ptz
    after_save: str = ""  # a line of main() after the artifact is saved
    scorer: str = "eval_val"  # the function whose score main() prints
    stdlib_imports: tuple[str, ...] = ()  # import lines after `import os`
    imports: tuple[str, ...] = ()  # import lines before `import torch`
    constants: tuple[str, ...] = ()  # module-level lines before VAL_FILES
    log_before_size: tuple[str, ...] = ()  # log lines between the end of training and "Code size:"
    log_scores: tuple[str, ...] = (SLIDING_SCORE,)  # the log's last lines, after the roundtrip score
    stop_train_ms: int = 590_000  # train_time of the log's stopping_early line
    claim_bpb: float = 1.1  # submission.json val_bpb
    files: tuple[str, ...] = ()  # files copied from tests/fixtures/verify/ into the folder


HEADER = '''"""Synthetic record for verify's tests: never run, only scanned."""
import os
{stdlib}
{imports}import torch
import torch.nn.functional as F

{constants}VAL_FILES = os.environ.get("VAL_FILES", "./data/fineweb_val_*.bin")
'''

LOAD_VALIDATION = '''def load_validation_tokens(pattern):
    return torch.zeros(1000, dtype=torch.long)
'''

EVAL_VAL = '''def eval_val(model, val_tokens, seq_len=1024):
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for i in range(0, val_tokens.numel() - 1, seq_len):
            x = val_tokens[i:i + seq_len]
            y = val_tokens[i + 1:i + seq_len + 1]
            logits = model(x)
            nll = F.cross_entropy(logits, y, reduction="none")
            loss_sum += nll.sum()
            token_count += y.numel()
    return loss_sum / token_count
'''

SCAFFOLD = (LOAD_VALIDATION, TRAIN_AND_QUANTIZE, EVAL_VAL)  # the functions every case has, in file order

MAIN = '''def main(model, opt, train_loader):
    val_tokens = load_validation_tokens(VAL_FILES)
    train(model, opt, train_loader, 5000)
{before_quantize}    q = quantize(model)
    torch.save({artifact}, "final_model.ptz")
{after_save}    print({scorer}(model, val_tokens))
'''


def _lines(*lines: str, indent: str = "") -> str:
    return "".join(f"{indent}{x}\n" for x in lines if x)


def train_gpt_source(case: Case) -> str:
    """The case's train_gpt.py: header, scaffold, the case's pattern, main()."""
    header = HEADER.format(
        stdlib=_lines(*case.stdlib_imports),
        imports=_lines(*case.imports),
        constants=_lines(*case.constants),
    )
    main = MAIN.format(
        before_quantize=_lines(case.before_quantize, indent="    "),
        artifact=case.artifact,
        after_save=_lines(case.after_save, indent="    "),
        scorer=case.scorer,
    )
    pattern = [case.pattern.strip("\n") + "\n"] if case.pattern else []
    parts = [header, *SCAFFOLD, *pattern, main]
    return "\n\n".join(parts)


def train_log(case: Case, code_bytes: int) -> str:
    """Seed 42's log on 8xH100, as the challenge's scripts print it."""
    gpus = [
        f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:0{i}:00.0 Off |                    0 |"
        for i in range(8)
    ]
    return _lines(
        *gpus,
        "world_size:8 grad_accum_steps:1",
        "seed:42",
        "step:1/20000 train_loss:6.9000 train_time:100ms step_avg:100.00ms",
        "step:5000/20000 val_loss:2.4500 val_bpb:1.1200 train_time:590000ms step_avg:118.00ms",
        f"stopping_early: wallclock_cap train_time:{case.stop_train_ms}ms step:5000/20000",
        *case.log_before_size,
        f"Code size: {code_bytes} bytes",
        f"Serialized model int6+brotli: {MODEL_BYTES} bytes",
        f"Total submission size int6+brotli: {MODEL_BYTES + code_bytes} bytes",
        "final_int6_roundtrip val_loss:2.45000000 val_bpb:1.12000000 eval_time:9000ms",
        *case.log_scores,
    )


def write_record(folder: Path, case: Case) -> Path:
    """Write ``case`` as a records folder at ``folder`` (created; its name is the record's name)."""
    name = folder.name
    folder.mkdir(parents=True)
    source = train_gpt_source(case)
    (folder / "train_gpt.py").write_text(source)
    code_bytes = len(source.encode())
    (folder / "train_seed42.log").write_text(train_log(case, code_bytes))
    claim = {
        "author": "Verify Tests",
        "github_id": "verify-tests",
        "name": name,
        "date": "2026-05-01",
        "track": "10min_16mb",
        "hardware": "8xH100 80GB HBM3",
        "val_bpb": case.claim_bpb,
        "seeds": [42],
        "bytes_total": MODEL_BYTES + code_bytes,
    }
    (folder / "submission.json").write_text(json.dumps(claim, indent=2) + "\n")
    (folder / "README.md").write_text(
        f"# {name}\n\nA synthetic records folder for verify's tests, assembled by tests/verify_fixtures.py.\n"
    )
    for f in case.files:
        shutil.copyfile(DATA / f, folder / f)
    return folder
