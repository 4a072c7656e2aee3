"""Small figures shared by stages of both families (no model code, so the LLM stages can use it)."""

from __future__ import annotations

from pathlib import Path


def message_png(png_path: Path, text: str) -> None:
    """A small PNG holding one line of text: the plot a stage declares when it has nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
