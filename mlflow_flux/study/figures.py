"""The study's own figures: rows of shape images (the dataset preview, originals above reconstructions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .shapes import SHAPES

__all__ = ["image_rows_figure"]


def image_rows_figure(rows: Sequence[tuple[str, np.ndarray]], labels: Sequence[int] | None = None) -> Figure:
    """A grid of images: one row per ``(row label, images)`` pair, one column per image (e.g. per shape)."""
    columns = max(len(images) for _, images in rows)
    fig = Figure(figsize=(1.1 * columns + 0.8, 1.15 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (row_label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0.0, vmax=1.0)
            if c == 0:
                ax.set_ylabel(row_label, fontsize=8)
            if r == 0 and labels is not None and c < len(labels):
                ax.set_title(SHAPES[labels[c]], fontsize=8)
    return fig
