"""The PNG plots every stage logs to MLflow (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def class_histogram(hist: dict[str, dict[str, int]], title: str):
    """Stacked bars: images per class, one colour per split."""
    names = list(hist)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    bottom = np.zeros(len(names))
    for split in ("train", "val", "test"):
        vals = np.array([hist[n][split] for n in names])
        ax.bar(names, vals, bottom=bottom, label=split)
        bottom += vals
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def curve(values: list[float], title: str, ylabel: str, xlabel: str = "step"):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(values) + 1), values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def image_rows(rows: dict[str, np.ndarray], title: str):
    """Rows of images, each (N, H, W, 3) floats in [0, 1]: e.g. masked / reconstruction / original."""
    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(1.2 * n, 1.3 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(np.clip(rows[name][c], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar_table(values: dict[str, float], title: str, xlabel: str):
    names = list(values)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def pareto(evaluated: list[dict], front: list[dict], budget_ms: float, chosen: dict | None, title: str):
    """Every evaluated arch (latency vs top-1), the front highlighted, the budget as a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([c["predicted_ms"] for c in evaluated], [c["top1"] for c in evaluated], s=14, alpha=0.5,
               label="evaluated")
    ax.plot([c["predicted_ms"] for c in front], [c["top1"] for c in front], "o-", color="C3", label="Pareto front")
    ax.axvline(budget_ms, color="k", linestyle="--", label=f"budget {budget_ms:g} ms")
    if chosen:
        ax.scatter([chosen["predicted_ms"]], [chosen["top1"]], marker="*", s=200, color="C2", label="chosen", zorder=5)
    ax.set_xlabel("predicted p50 latency (ms)")
    ax.set_ylabel("val top-1 (weight sharing)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def predicted_vs_measured(pairs_fit: list[tuple[float, float]], pairs_holdout: list[tuple[float, float]],
                          title: str):
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for pairs, label in ((pairs_fit, "fit"), (pairs_holdout, "held out")):
        if pairs:
            ax.scatter([m for m, _ in pairs], [p for _, p in pairs], s=16, label=label)
    hi = max([m for m, _ in pairs_fit + pairs_holdout] + [p for _, p in pairs_fit + pairs_holdout])
    ax.plot([0, hi], [0, hi], "k--", linewidth=1)
    ax.set_xlabel("measured p50 (ms)")
    ax.set_ylabel("predicted p50 (ms)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def histogram(samples: list[float], title: str, xlabel: str):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(samples, bins=40)
    for q, style in ((50, "-"), (99, "--")):
        v = float(np.percentile(samples, q))
        ax.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("runs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
