"""``python -m verify.deep_probe``: the legality probes of trainer/probes.py on an artifact.

Reads the hyperparameters from the environment (as train_gpt.py does, with ARTIFACT, DATA_PATH,
TOKENIZER_PATH set by verify's deep check), rebuilds the model from the artifact, and prints one JSON
line per probe ({"name", "passed", "message", "evidence"}). Exit 3 = cannot run (missing module or
data: the check SKIPs), 0 = ran (the lines say pass/fail), other = crashed.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    try:
        import sentencepiece as spm

        from trainer.artifact import load_artifact
        from trainer.bpb import ByteCounter, position_bytes
        from trainer.config import Hyperparameters
        from trainer.data import load_validation_tokens
        from trainer.dist import init_distributed
        from trainer.model import GPT
        from trainer.probes import probe_causality, probe_score_before_update
        from trainer.quant import dequantize_into
    except ImportError as e:
        print(f"the trainer's modules are not importable: {e}")
        return 3
    h = Hyperparameters.from_env()
    dist = init_distributed()
    model = GPT(h)
    try:
        dequantize_into(model, load_artifact(h.artifact))
    except (ValueError, OSError) as e:  # ArtifactError is a ValueError
        print(f"cannot load {h.artifact} into the model of the logged hyperparameters: {e}")
        return 1
    model = model.to(dist.device).eval()
    sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    n_probe = int(os.environ.get("VERIFY_PROBE_TOKENS", "0")) or 3 * h.ttt_chunk_tokens + 1
    val = load_validation_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), max_tokens=n_probe)
    if val.numel() < 4:
        print("too few validation tokens for the probes")
        return 3
    seq = val[: min(val.numel(), h.eval_seq_len)]
    results = [probe_causality(model, seq, t=seq.numel() // 2)]
    if h.ttt_enabled:
        val_bytes = position_bytes(ByteCounter(sp, h.vocab_size), val)
        results.append(probe_score_before_update(h, model, dist, val, val_bytes))
    for res in results:
        print(
            json.dumps(
                {
                    "name": res.name,
                    "passed": bool(res.passed),
                    "message": res.message,
                    "evidence": res.evidence,
                },
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
