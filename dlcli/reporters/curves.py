"""curves.png: the metrics of a run as curves, redrawn after every epoch from
metrics.jsonl (which holds the epochs before a resume too)."""

from __future__ import annotations

import json
from pathlib import Path

from dlcli.fileio import atomic_write
from dlcli.reporters import Reporter, Run


class Curves(Reporter):
    def start(self, run: Run) -> None:
        self.run = run

    def record(self, record: dict) -> None:
        if record["kind"] == "epoch":  # metrics.jsonl has it by now (it reports first)
            plot_metrics(self.run.dir, self.run.monitor)


UNITS = (("entropy", "bits"), ("loss", "nats"), ("nelbo", "nats"), ("recon", "nats"),
         ("kl", "nats"), ("nll", "nats"), ("accuracy", "%"), ("exact_match", "%"),
         ("errors", "%"), ("bleu", "0-100"), ("chrf", "0-100"), ("ppl", "per token"),
         ("active_units", "latent units"), ("d_x", "probability"), ("d_g_z", "probability"))
PERCENT = ("accuracy", "exact_match", "errors")
TITLES = {"d_loss": "D loss", "g_loss": "G loss", "d_x": "D(x) on real images",
          "d_g_z": "D(G(z)) on generated images", "ppl": "perplexity", "bleu": "BLEU", "chrf": "chrF"}
NOT_PLOTTED = {"kind", "epoch", "step", "epoch_seconds", "items_per_s"}


def quantity(key: str) -> str:
    return key.removeprefix("train_").removeprefix("val_")


def unit_of(name: str) -> str:
    return next((unit for word, unit in UNITS if word in name), "")


def plot_metrics(run_dir: Path, monitor: str | None = None) -> None:
    """curves.png: one panel per quantity, titled with its unit; training (dashed, paler)
    and validation (solid) of a quantity in one colour, the steps within epochs
    faint behind; the best epoch by `monitor` (lower is better) marked in every panel."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(k for r in epochs for k, v in r.items()
                              if k not in NOT_PLOTTED and isinstance(v, (int, float))))
    panels = list(dict.fromkeys(quantity(k) for k in keys))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows + 0.6), squeeze=False)
    scored = [r for r in epochs if isinstance(r.get(monitor), (int, float))]
    best = min(scored, key=lambda r: r[monitor]) if scored else None
    ends = {0: 0, **{r["epoch"]: r["step"] for r in epochs}}  # last step of each epoch
    last = epochs[-1]["epoch"]
    marker = "o" if len(epochs) <= 30 else None
    palette = plt.get_cmap("tab10").colors
    for i, (ax, name) in enumerate(zip(axes.flat, panels)):
        color = palette[i % 10]
        scale = 100 if name in PERCENT else 1
        # steps within epochs, at their fraction of the epoch
        steps = [(r["epoch"] - 1 + (r["step"] - ends.get(r["epoch"] - 1, 0))
                  / max(ends.get(r["epoch"], r["step"]) - ends.get(r["epoch"] - 1, 0), 1),
                  r[name] * scale)
                 for r in records if r.get("kind") == "step" and isinstance(r.get(name), (int, float))]
        if steps:
            ax.plot(*zip(*steps), color=color, alpha=0.18, linewidth=0.7)
        for key, alpha, style in ((f"train_{name}", 0.6, "--"), (name, 1.0, "-"), (f"val_{name}", 1.0, "-")):
            points = [(r["epoch"], r[key] * scale) for r in epochs if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), color=color, alpha=alpha, linestyle=style, marker=marker,
                        markersize=4, linewidth=1.6)
        if best is not None:
            ax.axvline(best["epoch"], color="0.45", linestyle=":", linewidth=1.2)
            if quantity(monitor) == name and monitor in best:
                ax.plot(best["epoch"], best[monitor] * scale, "o", markersize=10, markerfacecolor="none",
                        markeredgecolor="black", markeredgewidth=1.4)
        unit = unit_of(name)
        ax.set_title(TITLES.get(name, name.replace("_", " ")) + (f"  ({unit})" if unit else ""),
                     fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0, last + max(0.25, last / 50))  # from 0: the steps of epoch 1
        ax.set_xlabel("epoch")
        ax.margins(y=0.12)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles = [Line2D([], [], color="0.55", linestyle="--", marker=marker, label="training"),
               Line2D([], [], color="0.15", marker=marker, label="validation")]
    title = f"{run_dir.resolve().parent.name} / {run_dir.resolve().name}"
    if best is not None:
        handles.append(Line2D([], [], color="0.45", linestyle=":", label=f"best epoch ({monitor})"))
        title += f"  ·  best epoch {best['epoch']}: {monitor} {best[monitor]:.4g}"
    fig.suptitle(title, fontsize=12)
    # the legend sits between the title and the panels, never over the data
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
