"""What a researcher sees in MLflow's UI, checked in a real Chromium driven by Playwright against a real server.

Needs Debian's chromium (``apt-get install chromium``, which the Makefile's ``browser`` step installs) and the
``browser`` extra. Playwright's own browser download is not used: ``executable_path`` points at the system one.
Screenshots go to ``$MLFLOW_FLUX_TEST_ARTIFACTS`` (default ``test-artifacts/``) under ``browser/``; the test prints
the path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest

from tests.helpers import PYTHON, ROOT, subprocess_env

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("MLFLOW_FLUX_REQUIRE_BROWSER") == "1"  # make test: a missing browser fails, never skips


@pytest.fixture()
def browser_page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("playwright is not installed (pip install 'mlflow-flux[browser]')")
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("chromium is not installed (apt-get install chromium, or make test installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _screenshots() -> Path:
    directory = Path(os.environ.get("MLFLOW_FLUX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {directory}")
    return directory


def _sections(text: str) -> list[tuple[str, str]]:
    """The chart sections of a run's "Model metrics" tab, in order: (title, the text up to the next section)."""
    heads = list(re.finditer(r"^([^\n]+)\n\((\d+)\)\nAdd chart$", text, re.M))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return [(h.group(1), text[h.end():end]) for h, end in zip(heads, ends)]


def test_the_ui_opens_on_the_sweep_and_its_variants_and_shows_the_report(server, browser_page):
    name = f"browser-{uuid.uuid4().hex[:8]}"
    store = {"uri": server["uri"], "experiment_name": name}
    mlflow.set_tracking_uri(server["uri"])
    experiment_id = mlflow.create_experiment(name)
    out = subprocess.run(
        [*PYTHON, "-m", "mlflow_flux.cli", "sweep", "--lrs", "0.01,0.0001", "--epochs", "8", "--n-samples", "64",
         "--image-size", "16", "--hidden", "32,8", "--window", "3", "--summary-every", "1"],
        cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # The closing block names the runs table and the report, at the server's own address.
    runs_url = re.search(r"^  runs: +(\S+)$", out.stdout, re.M).group(1)
    report_url = re.search(r"^  report: +(\S+)$", out.stdout, re.M).group(1)
    assert runs_url.startswith(f"{server['uri']}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    shots = _screenshots()
    page = browser_page

    # The printed URL opens the runs table (not the GenAI overview) with the sweep and its variants, by name.
    page.goto(runs_url)
    sweep_name = "sweep adam lr×2 seed×1 8ep"
    for run_name in (sweep_name, "adam lr=0.01 seed=0", "adam lr=0.0001 seed=0", f"report of {sweep_name}"):
        page.get_by_text(run_name, exact=True).first.wait_for()
    assert "/runs" in page.url and "overview" not in page.url
    page.screenshot(path=str(shots / "runs_table.png"))

    # Opened by hand in a fresh browser, the experiment lands on MLflow's GenAI overview; the documented clicks
    # ("Got it" on MLflow's popover, then "Model training" at the top left) show the runs table with the sweep.
    fresh = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    fresh.set_default_timeout(60_000)
    fresh.goto(f"{server['uri']}/#/experiments/{experiment_id}")
    fresh.get_by_text("Model training", exact=True).first.wait_for()
    fresh.wait_for_timeout(3000)
    fresh.screenshot(path=str(shots / "fresh_experiment.png"))
    got_it = fresh.get_by_role("button", name="Got it")
    if got_it.count():  # MLflow's "Detect Issues in Your Traces" popover covers the page on a first visit
        got_it.first.click()
    fresh.get_by_text("Model training", exact=True).first.click()
    fresh.get_by_text(sweep_name, exact=True).first.wait_for()
    assert "/runs" in fresh.url, fresh.url
    fresh.screenshot(path=str(shots / "after_model_training_click.png"))
    fresh.close()

    # A variant's first chart section holds the loss and the whole-network participation.
    client = mlflow.MlflowClient()
    variant = client.search_runs([experiment_id], "tags.mlflow_flux.role = 'variant' and params.lr = '0.01'")[0]
    page.goto(f"{server['uri']}/#/experiments/{experiment_id}/runs/{variant.info.run_id}/model-metrics"
              "?workflowType=machine_learning")
    page.get_by_text("loss_train", exact=True).first.wait_for()
    sections = _sections(page.inner_text("main"))
    assert sections, page.inner_text("main")[:2000]
    title, charts = sections[0]
    assert title == "flux" and "loss_train" in charts and "participating_frac" in charts, sections[:2]
    # per-layer sections follow (and MLflow's own, empty, "Model metrics" section for keys without a prefix)
    assert all(title.startswith("flux/") or title == "Model metrics" for title, _ in sections[1:]), sections
    page.screenshot(path=str(shots / "variant_charts.png"))

    # The report renders in the artifact viewer, with its claims.
    page.goto(report_url)
    claims = None
    for _ in range(120):
        frames = [f for f in page.frames if "claims against our runs" in (f.content() or "")]
        if frames:
            claims = frames[0]
            break
        page.wait_for_timeout(500)
    assert claims is not None, "report.html did not render in the artifact viewer"
    text = claims.inner_text("body")
    assert "(a) lr 0.01 reconstructs best" in text and "(b) lr 0.01 leaves more neurons inactive" in text
    page.screenshot(path=str(shots / "report.png"), full_page=True)
