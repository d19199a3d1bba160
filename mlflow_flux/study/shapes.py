"""The eight-shape dataset: grayscale images of geometric shapes, deterministic from a seed.

Each image holds one filled shape at a random position, scale and rotation. Generation is vectorised: every
pixel of every image is tested against its shape's implicit inside-function in one numpy pass per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SHAPES", "ShapeSpec", "make_shapes"]

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ellipse", "hexagon")

_SQRT3 = np.sqrt(3.0)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own frame, where the shape fits the unit disc."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.75
    if shape == "triangle":  # equilateral, circumradius 1, apex up
        return (v >= -0.5) & (_SQRT3 * u + v <= 1.0) & (-_SQRT3 * u + v <= 1.0)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "star":  # five points: the radius limit swings between 0.4 and 1.0 with the angle
        radius = np.sqrt(u * u + v * v)
        angle = np.arctan2(u, v)
        return radius <= 0.4 + 0.6 * (0.5 + 0.5 * np.cos(5.0 * angle)) ** 3
    if shape == "cross":
        return ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0))
    if shape == "ellipse":
        return u * u + (v / 0.5) ** 2 <= 1.0
    if shape == "hexagon":
        return (av <= _SQRT3 / 2) & (_SQRT3 * au + av <= _SQRT3)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class ShapeSpec:
    """Settings that determine the dataset bit for bit."""

    n_samples: int = 2048
    image_size: int = 32
    noise: float = 0.0
    seed: int = 0
    min_scale: float = 0.22  # shape radius as a fraction of the image side
    max_scale: float = 0.38

    @property
    def name(self) -> str:
        return f"shapes8-n{self.n_samples}-s{self.image_size}-noise{self.noise:g}-seed{self.seed}"


def make_shapes(spec: ShapeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Generate the dataset.

    Args:
        spec: the dataset settings.

    Returns:
        ``(images, labels)``: float32 images in [0, 1] of shape ``(n, size, size)`` and int64 labels indexing
        :data:`SHAPES`. Classes are balanced (they differ by at most one image) and shuffled.
    """
    rng = np.random.default_rng(spec.seed)
    n, size = spec.n_samples, spec.image_size
    labels = rng.permutation(np.arange(n) % len(SHAPES)).astype(np.int64)
    scale = rng.uniform(spec.min_scale, spec.max_scale, n) * size
    # Keep the shape's bounding disc inside the frame.
    cx = rng.uniform(scale, size - scale)
    cy = rng.uniform(scale, size - scale)
    theta = rng.uniform(0.0, 2.0 * np.pi, n)

    pixel = np.arange(size, dtype=np.float64) + 0.5
    images = np.zeros((n, size, size), dtype=np.float32)
    for class_index, shape in enumerate(SHAPES):
        idx = np.flatnonzero(labels == class_index)
        if idx.size == 0:
            continue
        dx = (pixel[None, None, :] - cx[idx, None, None]) / scale[idx, None, None]
        dy = (pixel[None, :, None] - cy[idx, None, None]) / scale[idx, None, None]
        cos, sin = np.cos(theta[idx])[:, None, None], np.sin(theta[idx])[:, None, None]
        u = cos * dx + sin * dy
        v = -sin * dx + cos * dy
        images[idx] = _inside(shape, u, -v)  # image rows grow downwards; flip so "up" is up
    if spec.noise > 0:
        images += rng.normal(0.0, spec.noise, images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return images, labels
