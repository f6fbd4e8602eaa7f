"""Small matplotlib figures for reports and the Dagster UI (PNG, headless)."""

from __future__ import annotations

import base64
from pathlib import Path


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported on first use: the asset
    modules that import this one are loaded by every `dagster` command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path: Path, series: dict[str, list[float]], title: str, xlabel: str, ylabel: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, values in series.items():
        ax.plot(range(len(values)), values, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(path: Path, values: dict[str, float], title: str, ylabel: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    names = list(values)
    ax.bar(names, [values[n] for n in names], color="#4a7fb5")
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_image(path: Path, alt: str) -> str:
    """Inline PNG for Markdown metadata, so the plot shows in the Dagster UI itself."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"
