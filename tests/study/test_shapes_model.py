import numpy as np
import pytest
import torch

from mlflow_flux.study.model import Autoencoder
from mlflow_flux.study.shapes import SHAPES, ShapeSpec, make_shapes


def test_same_settings_give_bit_identical_images():
    a, la = make_shapes(ShapeSpec(n_samples=200, seed=3, noise=0.1))
    b, lb = make_shapes(ShapeSpec(n_samples=200, seed=3, noise=0.1))
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    c, _ = make_shapes(ShapeSpec(n_samples=200, seed=4, noise=0.1))
    assert a.tobytes() != c.tobytes()


def test_dataset_is_balanced_grayscale_and_in_range():
    images, labels = make_shapes(ShapeSpec(n_samples=1001, image_size=24))
    assert images.shape == (1001, 24, 24) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    counts = np.bincount(labels, minlength=len(SHAPES))
    assert len(SHAPES) == 8 and counts.max() - counts.min() <= 1


def test_the_eight_classes_differ():
    """A nearest-centroid classifier on rotation-invariant radial profiles must beat chance by far."""
    images, labels = make_shapes(ShapeSpec(n_samples=1600, seed=1))
    features = []
    for image in images:
        ys, xs = np.nonzero(image > 0.5)
        r = np.hypot(xs - xs.mean(), ys - ys.mean())
        r = r / r.max()
        features.append(np.histogram(r, bins=12, range=(0, 1), density=True)[0])
    features = np.array(features)
    train, test = slice(0, 800), slice(800, None)
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(8)])
    predicted = np.argmin(((features[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == labels[test]).mean()
    assert accuracy > 0.6, accuracy  # chance is 0.125


def test_noise_changes_pixels_but_not_shapes():
    clean, _ = make_shapes(ShapeSpec(n_samples=50))
    noisy, _ = make_shapes(ShapeSpec(n_samples=50, noise=0.2))
    assert not np.array_equal(clean, noisy)
    assert np.abs(noisy - clean).mean() < 0.2


def test_autoencoder_shapes_and_layer_names():
    model = Autoencoder(32 * 32, (128, 32, 8))
    with torch.no_grad():
        out = model(torch.rand(5, 32, 32))
    assert out.shape == (5, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    linear = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [
        ("encoder.fc1", 1024, 128), ("encoder.fc2", 128, 32), ("encoder.fc3", 32, 8),
        ("decoder.fc1", 8, 32), ("decoder.fc2", 32, 128), ("decoder.out", 128, 1024),
    ]


def test_autoencoder_rejects_bad_widths():
    with pytest.raises(ValueError, match="hidden width"):
        Autoencoder(64, (16, 0))
