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
    """Rows of images (each (N, H, W, 3) floats in [0, 1]), one row per name: e.g. masked / reconstruction / original."""
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
