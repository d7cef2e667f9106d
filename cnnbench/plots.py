"""Pictures of runs: per-epoch training loss and test accuracy per framework, and throughput bars.

matplotlib is imported inside the functions (Agg backend, no display needed) so that the CLI
starts fast when nobody asks for a plot. Names from plugins and result files go through
``mpl_text``: a ``$`` would otherwise start mathtext, and a malformed formula stops ``savefig``.
"""

from __future__ import annotations

from pathlib import Path

from cnnbench.errors import UsageError
from cnnbench.report import strip_controls
from cnnbench.results import RunResult


def mpl_text(text: object) -> str:
    """Data as literal matplotlib text: no control characters, ``$`` escaped so no mathtext is parsed."""
    return strip_controls(text).replace("$", r"\$")


def plot_runs(runs: list[tuple[str, RunResult]], path: str | Path) -> Path:
    """One row per (title, run): loss per epoch, test accuracy per epoch, steady-state samples/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"plot file must end in .png, .svg or .pdf, got {path.name}")
    fig, axes = plt.subplots(len(runs), 3, figsize=(15, 3.8 * len(runs)), squeeze=False)
    for (raw_title, run), (ax_loss, ax_acc, ax_speed) in zip(runs, axes, strict=True):
        title = mpl_text(raw_title)
        names, speeds, spreads = [], [], []
        for row in run.backends:
            ok = row.ok_repeats()
            if not ok:
                continue
            label = mpl_text(row.backend)
            epochs = ok[0].epochs
            xs = [e.epoch for e in epochs]
            ax_loss.plot(xs, [e.train_loss for e in epochs], marker="o", label=label)
            accuracies = [(e.epoch, e.test_accuracy) for e in epochs if e.test_accuracy is not None]
            if accuracies:
                ax_acc.plot([a[0] for a in accuracies], [100 * a[1] for a in accuracies], marker="o", label=label)
            elif ok[0].test_accuracy is not None and xs:
                ax_acc.plot([xs[-1]], [100 * ok[0].test_accuracy], marker="s", label=f"{label} (final)")
            values = row.values("train_throughput")
            if values:
                names.append(label)
                speeds.append(row.median("train_throughput"))
                spreads.append((max(values) - min(values)) / 2 if len(values) > 1 else 0)
        ax_loss.set(title=f"{title}: training loss", xlabel="epoch", ylabel="mean cross-entropy")
        ax_acc.set(title=f"{title}: test accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_speed.bar(names, speeds, yerr=spreads if any(spreads) else None, color="tab:blue")
        ax_speed.set(title=f"{title}: steady-state training", ylabel="samples / s")
        ax_speed.tick_params(axis="x", labelrotation=20)
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
