"""The synthetic records of verify's tests: per case, only what it adds to the scaffold of
tests/verify_fixtures.py (the pattern under test, the line of main() that calls it, the log lines).

The names say what a case holds: c1_*..c4_* break condition C1..C4 (in the code, or, for *_log_*, in
what the log proves), legal_* are designs that must pass, r_* break a resource rule, tok_* exercise the
tokenizer check's byte accounting. ``build_case(tmp_path, name)`` writes one as a records folder.
"""

from __future__ import annotations

from pathlib import Path

from verify_fixtures import Case, write_record

# The legal evaluation of score-first TTT: each chunk is scored under no_grad before it is trained on.
# legal_score_first_ttt is about it; the *_log_* cases use it so that only their logs break a rule.
SCORE_FIRST_TTT = r'''
def eval_ttt(model, val_tokens, chunk=2048, epochs=3, lr=0.005):
    """Score-first TTT: each chunk is scored under no_grad, then trained on."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_sum = torch.zeros(())
    token_count = 0
    for i in range(0, val_tokens.numel() - 1, chunk):
        x = val_tokens[i:i + chunk]
        y = val_tokens[i + 1:i + chunk + 1]
        with torch.no_grad():
            nll = F.cross_entropy(model(x), y, reduction="none")
            loss_sum += nll.sum()
            token_count += y.numel()
        for _ in range(epochs):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return loss_sum / token_count
'''

# The byte table a tokenizer-aware record builds from its pieces (the tok_* cases all have it).
BUILD_BYTE_LUTS = r'''
def build_byte_luts(sp, vocab_size):
    base_bytes = torch.zeros(vocab_size, dtype=torch.int16)
    for i in range(vocab_size):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        base_bytes[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return base_bytes
'''

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ C1: causality, val data leaks
    "c1_val_in_artifact": Case(
        artifact='{"w": q, "cache": val_tokens[:65536].clone()}',  # validation tokens saved in the artifact
    ),
    "c1_val_calibration": Case(
        pattern=r'''
def collect_hessians(model, tokens, n=64):
    return {name: torch.eye(4) for name, _ in model.named_parameters()}
''',
        before_quantize="hessians = collect_hessians(model, val_tokens[:131072])",  # calibrates on val
        artifact='{"w": q, "h": len(hessians)}',
    ),
    "c1_cache_from_unscored": Case(
        pattern=r'''
def eval_ngram(model, val_tokens, vocab=1024, lam=0.8):
    """A unigram table of the whole validation split, built before any token is scored."""
    unigram_counts = torch.bincount(val_tokens, minlength=vocab).float() + 1
    p_uni = unigram_counts / unigram_counts.sum()
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for i in range(0, val_tokens.numel() - 1, 1024):
            x, y = val_tokens[i:i + 1024], val_tokens[i + 1:i + 1025]
            p = lam * torch.softmax(model(x), -1) + (1 - lam) * p_uni
            loss_sum += -torch.log(p.gather(-1, y[:, None])).sum()
            token_count += y.numel()
    return loss_sum / token_count
''',
    ),
    "c1_cache_updated_before_score": Case(
        pattern=r'''
def eval_cache(model, val_tokens, vocab=1024, lam=0.9):
    """The cache learns each token before the token is scored."""
    bigram_counts = torch.ones(vocab, vocab)
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for t in range(1, val_tokens.numel()):
            prev, y = val_tokens[t - 1], val_tokens[t]
            bigram_counts[prev, y] += 1
            p_cache = bigram_counts[prev] / bigram_counts[prev].sum()
            p = lam * torch.softmax(model(val_tokens[:t])[-1], -1) + (1 - lam) * p_cache
            loss_sum += -torch.log(p[y])
            token_count += 1
    return loss_sum / token_count
''',
    ),
    "c1_val_file_and_network": Case(
        stdlib_imports=("import urllib.request",),
        imports=("import numpy as np",),
        pattern=r'''
def fetch_prior():
    with urllib.request.urlopen("https://example.com/prior.bin") as r:
        return r.read()


def eval_with_prior(model, val_tokens):
    answers = np.load("val_answers_cache.npy")
    return eval_val(model, val_tokens) + 0 * float(answers.sum()) + 0 * len(fetch_prior())
''',
    ),
    # ------------------------------------------------------------------ C2: a normalized distribution
    "c2_oracle_gate": Case(
        pattern=r'''
def eval_two(model, ngram, val_tokens):
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for i in range(0, val_tokens.numel() - 1, 1024):
            x, y = val_tokens[i:i + 1024], val_tokens[i + 1:i + 1025]
            nll_model = F.cross_entropy(model(x), y, reduction="none")
            nll_ngram = F.cross_entropy(ngram(x), y, reduction="none")
            nll = torch.minimum(nll_model, nll_ngram)
            loss_sum += nll.sum()
            token_count += y.numel()
    return loss_sum / token_count
''',
    ),
    "c2_gold_logit_bias": Case(
        pattern=r'''
def eval_biased(model, val_tokens, bias=2.0):
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for i in range(0, val_tokens.numel() - 1, 1024):
            x, y = val_tokens[i:i + 1024], val_tokens[i + 1:i + 1025]
            logits = model(x)
            logits[torch.arange(y.numel()), y] += bias
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            token_count += y.numel()
    return loss_sum / token_count
''',
    ),
    "c2_gold_only_blend": Case(
        pattern=r'''
def eval_gold_blend(model, val_tokens, trigram_table, lam=0.7):
    """Mixes the two predictors' probabilities of the gold token only."""
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for t in range(2, val_tokens.numel()):
            ctx, y = val_tokens[t - 2:t], val_tokens[t]
            p_model_gold = torch.softmax(model(val_tokens[:t])[-1], -1)[y]
            p_ngram_gold = trigram_table[ctx[0], ctx[1], y]
            p = lam * p_model_gold + (1 - lam) * p_ngram_gold
            loss_sum += -torch.log(p)
            token_count += 1
    return loss_sum / token_count
''',
    ),
    # ------------------------------------------------------------------ C3: score before update
    "c3_prequant_ttt": Case(
        pattern=r'''
def ttt_adapt(model, val_tokens, epochs=3, lr=0.005):
    """Epochs over the validation split before the scored pass."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, val_tokens.numel() - 1, 2048):
            loss = F.cross_entropy(model(val_tokens[i:i + 2048]), val_tokens[i + 1:i + 2049])
            loss.backward()
            opt.step()
            opt.zero_grad()
''',
        before_quantize="ttt_adapt(model, val_tokens)",
    ),
    "c3_rescore_after_ttt": Case(
        pattern=r'''
def ttt_pass(model, tokens, lr=0.005):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(0, tokens.numel() - 1, 2048):
        loss = F.cross_entropy(model(tokens[i:i + 2048]), tokens[i + 1:i + 2049])
        loss.backward()
        opt.step()
''',
        after_save="ttt_pass(model, val_tokens)",  # trains on the split, then eval_val() scores it
    ),
    "c3_slot": Case(
        pattern=r'''
def eval_slot(model, val_tokens, seq_len=1024, steps=5):
    """Per-sample optimisation of a hidden-state delta on the tokens about to be scored."""
    loss_sum = torch.zeros(())
    token_count = 0
    for i in range(0, val_tokens.numel() - 1, seq_len):
        x_batch = val_tokens[i:i + seq_len]
        y_batch = val_tokens[i + 1:i + seq_len + 1]
        delta = torch.zeros(model.dim, requires_grad=True)
        slot_opt = torch.optim.AdamW([delta], lr=0.003)
        for _ in range(steps):
            slot_loss = F.cross_entropy(model.head(model.hidden(x_batch) + delta), y_batch)
            slot_loss.backward()
            slot_opt.step()
        with torch.no_grad():
            nll = F.cross_entropy(model.head(model.hidden(x_batch) + delta), y_batch, reduction="none")
            loss_sum += nll.sum()
            token_count += y_batch.numel()
    return loss_sum / token_count
''',
    ),
    "c3_train_then_score": Case(
        pattern=r'''
def eval_with_ttt(model, val_tokens, epochs=2, lr=0.005):
    """Trains on the whole split, then scores it."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, val_tokens.numel() - 1, 2048):
            loss = F.cross_entropy(model(val_tokens[i:i + 2048]), val_tokens[i + 1:i + 2049])
            loss.backward()
            opt.step()
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for i in range(0, val_tokens.numel() - 1, 2048):
            y = val_tokens[i + 1:i + 2049]
            loss_sum += F.cross_entropy(model(val_tokens[i:i + 2048]), y, reduction="sum")
            token_count += y.numel()
    return loss_sum / token_count
''',
    ),
    "c3_log_ttt_before_artifact": Case(  # legal code; the log shows TTT epochs before the artifact
        pattern=SCORE_FIRST_TTT,
        scorer="eval_ttt",
        log_before_size=(
            "ttt_prequant epoch:1/3 step:100 loss:2.6100",
            "ttt_prequant epoch:3/3 step:300 loss:2.5200",
        ),
    ),
    # ------------------------------------------------------------------ C4: one scoring pass
    "c4_two_pass": Case(
        pattern=r'''
def eval_two_pass(model, val_tokens, passes=2):
    """Scores the split on every pass and reports the last."""
    for _pass in range(passes):
        loss_sum = torch.zeros(())
        token_count = 0
        with torch.no_grad():
            for i in range(0, val_tokens.numel() - 1, 2048):
                y = val_tokens[i + 1:i + 2049]
                loss_sum += F.cross_entropy(model(val_tokens[i:i + 2048]), y, reduction="sum")
                token_count += y.numel()
    return loss_sum / token_count
''',
    ),
    "c4_log_second_pass": Case(  # legal code; the log scores a second pass and the claim takes it
        pattern=SCORE_FIRST_TTT,
        scorer="eval_ttt",
        log_scores=(
            "ttt_pass1 val_loss:2.39000000 val_bpb:1.09500000 eval_time:200000ms",
            "ttt_pass2 val_loss:2.30000000 val_bpb:1.05000000 eval_time:200000ms",
        ),
        claim_bpb=1.05,
    ),
    # ------------------------------------------------------------------ legal designs: no warning
    "legal_score_first_ttt": Case(pattern=SCORE_FIRST_TTT, scorer="eval_ttt"),
    "legal_phased_lora_ttt": Case(
        pattern=r'''
def global_sgd(model, tokens, lr=0.001):
    """Trains the base model on documents that were already scored."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(0, tokens.numel() - 1, 1024):
        loss = F.cross_entropy(model(tokens[i:i + 1024]), tokens[i + 1:i + 1025])
        loss.backward()
        opt.step()
        opt.zero_grad()


def forward_lora(model, lora, x):
    h = model.hidden(x)
    logits = model.lm_head(h)
    return logits + lora.lm_head_lora(h)


def eval_phased(model, lora, val_tokens, docs, phase_every=100):
    opt = torch.optim.AdamW(lora.parameters(), lr=1e-4)
    loss_sum = torch.zeros(())
    byte_sum = torch.zeros(())
    scored = []
    for d, (start, length) in enumerate(docs):
        x = val_tokens[start:start + length - 1]
        y = val_tokens[start + 1:start + length]
        per_tok = F.cross_entropy(forward_lora(model, lora, x), y, reduction="none")
        with torch.no_grad():
            loss_sum += per_tok.sum()
            byte_sum += y.numel()
        per_tok.mean().backward()
        opt.step()
        opt.zero_grad()
        scored.append(val_tokens[start:start + length])
        if d % phase_every == phase_every - 1:
            global_sgd(model, torch.cat(scored))
    return loss_sum / byte_sum
''',
    ),
    "legal_full_blend_and_causal_cache": Case(
        pattern=r'''
def eval_blend(model, val_tokens, vocab=1024, lam=0.9):
    """Mixes two full distributions, reads the gold token after; the cache learns a token after scoring it."""
    bigram_counts = torch.ones(vocab, vocab)
    loss_sum = torch.zeros(())
    token_count = 0
    with torch.no_grad():
        for t in range(1, val_tokens.numel()):
            prev, y = val_tokens[t - 1], val_tokens[t]
            p_model = torch.softmax(model(val_tokens[:t])[-1], -1)
            p_cache = bigram_counts[prev] / bigram_counts[prev].sum()
            p = lam * p_model + (1 - lam) * p_cache
            loss_sum += -torch.log(p[y])
            token_count += 1
            bigram_counts[prev, y] += 1
    return loss_sum / token_count
''',
    ),
    "legal_disabled_slot": Case(  # the SLOT of c3_slot, on a path the default SLOT_ENABLED=0 switches off
        constants=('SLOT_ENABLED = bool(int(os.environ.get("SLOT_ENABLED", "0")))',),
        pattern=r'''
def eval_sliding(model, val_tokens, seq_len=1024, steps=5):
    loss_sum = torch.zeros(())
    token_count = 0
    for i in range(0, val_tokens.numel() - 1, seq_len):
        x_batch = val_tokens[i:i + seq_len]
        y_batch = val_tokens[i + 1:i + seq_len + 1]
        if SLOT_ENABLED:
            delta = torch.zeros(model.dim, requires_grad=True)
            slot_opt = torch.optim.AdamW([delta], lr=0.003)
            for _ in range(steps):
                slot_loss = F.cross_entropy(model.head(model.hidden(x_batch) + delta), y_batch)
                slot_loss.backward()
                slot_opt.step()
        with torch.no_grad():
            nll = F.cross_entropy(model(x_batch), y_batch, reduction="none")
            loss_sum += nll.sum()
            token_count += y_batch.numel()
    return loss_sum / token_count
''',
    ),
    # ------------------------------------------------------------------ R: resource rules
    "r_gptq_after_cap": Case(  # legal code; the log calibrates GPTQ on training data after the 600 s cap
        pattern=SCORE_FIRST_TTT,
        scorer="eval_ttt",
        stop_train_ms=599_600,
        log_before_size=(
            "gptq:calibrating with 64 batches (training data)...",
            "gptq:calibrated 66 layers in 9.5s",
        ),
    ),
    # ------------------------------------------------------------------ tokenizer byte accounting
    "tok_markers_counted": Case(  # marker pieces of custom_caps.model counted as text, no sidecar
        pattern=BUILD_BYTE_LUTS,
        files=("custom_caps.model",),
    ),
    "tok_markers_sidecar": Case(
        pattern=BUILD_BYTE_LUTS
        + r'''

def load_original_bytes(pattern):
    """Per-token bytes of the original text, written beside the shards."""
    return load_validation_tokens(pattern.replace("fineweb_val_", "fineweb_val_bytes_"))
''',
        files=("custom_caps.model",),
    ),
    "tok_npz_table": Case(  # byte_table.npz gives 'ly' 6 bytes; custom.model's piece has 2
        pattern=BUILD_BYTE_LUTS,
        files=("custom.model", "byte_table.npz"),
    ),
    "tok_code_table": Case(  # a 260-entry byte table written into the code
        pattern=BUILD_BYTE_LUTS + "\n\nBASE_BYTES = [\n" + ("    " + "1, " * 19 + "1,\n") * 13 + "]\n",
    ),
}


def build_case(root: Path, name: str) -> Path:
    """Write the records folder of case ``name`` at ``root / name`` and return it."""
    return write_record(root / name, CASES[name])
