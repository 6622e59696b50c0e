"""``pgolf report DIR``: a loss-curve PNG per seed and a markdown table of the seeds (mean, std).

Writes DIR/loss_seed{SEED}.png (training loss per step, validation loss points, the final score in
the title) and DIR/results.md (the table), prints the table, and refreshes the section of
DIR/README.md between ``<!-- pgolf:results:begin -->`` and ``<!-- pgolf:results:end -->``
(appended at the end when the README has no such section; a missing README is left missing).
"""

from __future__ import annotations

import argparse
import io
import os

from pgolf.errors import PgolfError
from pgolf.fsutil import write_bytes, write_text
from pgolf.results import BEGIN, END, curve_image, results_section, seed_table
from pgolf.runs import folder_seeds, load_run, seed_files
from pgolf.submission import update_readme
from verify.logparse import RunSummary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="records folder")
    p.add_argument("--no-plots", action="store_true", help="only the table")
    return p


def plot_seed(run: RunSummary, seed: int, path: str) -> None:
    """Training loss (line) and validation loss (points) against the step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        if run.train_curve:
            steps, losses = zip(*run.train_curve)
            ax.plot(steps, losses, lw=1.2, label="train loss")
        if run.val_curve:
            ax.plot([v[0] for v in run.val_curve], [v[1] for v in run.val_curve], "o", ms=5, label="val loss")
        if not run.train_curve and not run.val_curve:
            ax.text(0.5, 0.5, "no loss curve in the log", ha="center", va="center", transform=ax.transAxes)
        score = "no final score"
        if run.val_bpb is not None:
            score = f"val_bpb {run.val_bpb:.5f} ({run.final_phase})"
        ax.set_title(f"seed {seed}: {score}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        if run.train_curve or run.val_curve:
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = args.folder
    seeds = folder_seeds(folder)
    runs = {s: load_run(seed_files(folder, s).log) for s in seeds}
    images = {}
    if not args.no_plots:
        for seed, run in runs.items():
            images[seed] = curve_image(folder, seed)
            plot_seed(run, seed, images[seed])
    table = seed_table(runs)
    write_text(os.path.join(folder, "results.md"), table)
    print(table, end="")
    for img in images.values():
        print(f"plot: {img}")
    readme = os.path.join(folder, "README.md")
    section = results_section(runs, images)
    if not os.path.isfile(readme):
        print(f"{readme}: not found; the table is in {os.path.join(folder, 'results.md')}")
        return 0
    what = update_readme(readme, section)
    if what.startswith("kept as is"):
        try:
            with open(readme, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise PgolfError(f"{readme}: cannot read ({e})") from None
        write_text(readme, text.rstrip("\n") + f"\n\n## Results\n\n{BEGIN}\n{section}{END}\n")
        what = "results section appended"
    print(f"{readme}: {what}")
    return 0
