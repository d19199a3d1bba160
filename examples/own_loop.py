"""mlflow_flux.watch on your own model and loop: a small CNN classifying the eight shapes.

    .venv/bin/python examples/own_loop.py          # ~20 s on a laptop CPU; then `mlflow ui` to look

Nothing in the loop changes for mlflow-flux except the `with watch(...)` block and one end_epoch() call.
"""

import mlflow
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.study.shapes import ShapeSpec, make_shapes

images, labels = make_shapes(ShapeSpec(n_samples=1024, image_size=32))
x = torch.from_numpy(images).unsqueeze(1)
y = torch.from_numpy(labels)

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 8),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

mlflow.set_experiment("mlflow-flux-example")
with mlflow.start_run(run_name="shape classifier") as run:
    # window=3 and summary_every=1 suit a short run; the defaults (10, 10) suit hundreds of epochs.
    with mlflow_flux.watch(model, window=3, summary_every=1) as flux:
        for epoch in range(8):
            model.train()
            for batch in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():  # evaluation passes are not counted as the neurons' training activity
                accuracy = (model(x).argmax(1) == y).float().mean().item()
            flux.end_epoch(epoch, {"loss/train": loss.item(), "accuracy": accuracy})
            print(f"epoch {epoch}: loss {loss.item():.3f}, accuracy {accuracy:.3f}")

traces = mlflow_flux.load_traces(run.info.run_id)
print(traces.groupby("layer", observed=True)[["w_std", "act_rate", "grad_norm"]].mean())
