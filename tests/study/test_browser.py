"""What a researcher sees in MLflow's UI, checked in a real Chromium driven by Playwright against a real server.

Needs Debian's chromium (``apt-get install chromium``, which the Makefile's ``browser`` step installs) and the
``browser`` extra. Playwright's own browser download is not used: ``executable_path`` points at the system one.
Screenshots go to ``$MLFLOW_FLUX_TEST_ARTIFACTS`` (default ``test-artifacts/``) under ``browser/``; the test prints
the path.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest

import mlflow_flux
from mlflow_flux.explorer.encoding import RELATIVE_RESOLUTION
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

    # The explorer pages, through the UI's artifact viewer: a variant's, then the report's over every run.
    explore_url = re.search(r"^  explore: +(\S+)$", out.stdout, re.M).group(1)
    variant_url = f"{server['uri']}/#/experiments/{experiment_id}/runs/{variant.info.run_id}/artifacts/explorer.html" \
                  "?workflowType=machine_learning"
    # Each in a page of its own: a hash-only navigation from another run's artifact view leaves MLflow's artifact
    # list empty ("No Artifacts Recorded") until a reload.
    for url, shot, runs in ((variant_url, "explorer_variant.png", 1), (explore_url, "explorer_report.png", 2)):
        viewer = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
        viewer.set_default_timeout(60_000)
        _check_explorer(viewer, url, shots / shot, runs=runs)
        viewer.close()


def _explorer_frame(page, url: str):
    """Open ``url`` (an explorer page in MLflow's artifact viewer) and return the viewer's frame once drawn."""
    page.goto(url)
    for _ in range(120):
        for frame in page.frames:
            if frame is page.main_frame:
                continue
            try:
                if frame.evaluate("() => document.body && document.body.getAttribute('data-ready') === 'true'"):
                    return frame
            except Exception:  # noqa: BLE001 -- a frame that is navigating away answers nothing
                continue
        page.wait_for_timeout(500)
    raise AssertionError(f"the explorer page did not draw in the artifact viewer: {url}")


def _check_explorer(page, url: str, screenshot: Path, runs: int) -> None:
    requests, errors = [], []

    def on_request(request):  # Playwright tags its handlers: a bound builtin (list.append) cannot be one
        requests.append(request)

    def on_error(error):
        errors.append(str(error))

    page.on("request", on_request)
    page.on("pageerror", on_error)
    frame = _explorer_frame(page, url)
    api = frame.evaluate("() => ({runs: fluxExplorer.runs, errors: fluxExplorer.errors, quantities: "
                         "fluxExplorer.quantities, resolution: fluxExplorer.resolution})")
    assert len(api["runs"]) == runs and not api["errors"], api
    # The heatmap is drawn: its pixels are not blank.
    painted = frame.evaluate("""() => { const c = document.querySelector('canvas.heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] && !(d[i] > 250 && d[i + 1] > 250 && d[i + 2] > 250)) n++;
        return n / (c.width * c.height); }""")
    assert painted > 0.5, painted
    # Choosing a neuron (a click on its row) shows the values the trace holds for it, within the stated resolution.
    drawn = frame.evaluate("() => ({rows: fluxExplorer.drawn.rows, bins: fluxExplorer.drawn.bins, "
                           "layer: fluxExplorer.drawn.layer, run: fluxExplorer.drawn.run})")
    row = drawn["rows"][len(drawn["rows"]) // 2]
    offset = frame.evaluate(f"() => fluxExplorer.cellCenter({row}, {drawn['bins'][-1]})")
    frame.locator("canvas.heatmap").click(position=offset)
    selected = frame.evaluate("() => fluxExplorer.selected")
    assert selected is not None and selected["layer"] == drawn["layer"], selected
    trace = mlflow_flux.load_traces(drawn["run"], layers=[drawn["layer"]])
    rows = trace[trace["neuron"] == selected["neuron"]].sort_values("epoch")
    assert rows["epoch"].tolist() == selected["last"]  # nothing pooled in this sweep: a bin is a snapshot
    for column, values in selected["values"].items():
        expected = rows[column].to_numpy(dtype=float)
        got = np.array([np.nan if v is None else v for v in values], dtype=float)
        finite = np.isfinite(expected)
        assert (np.isfinite(got) == finite).all(), column
        assert (np.abs(got[finite] - expected[finite]) <= RELATIVE_RESOLUTION * np.abs(expected[finite])).all(), column
    shown = frame.locator("td.value[data-quantity='w_std']").inner_text()
    # the table shows the page's value (checked against the trace above) to 4 significant digits
    held = selected["values"]["w_std"][-1]
    assert math.isclose(float(shown), held, rel_tol=5e-4), (shown, held)
    # Nothing leaves the page (the viewer loads it from a blob: URL), and nothing failed in it.
    own = [r.url for r in requests if r.frame == frame and not r.url.startswith(("blob:", "data:", "about:"))]
    assert not own, own
    assert not errors, errors
    page.remove_listener("request", on_request)
    page.remove_listener("pageerror", on_error)
    frame.frame_element().screenshot(path=str(screenshot))  # the viewer's iframe, as the user sees it
    if runs == 2:  # the sweep's two variants share their seed, so their start: paired neuron by neuron
        pairs = frame.evaluate("() => fluxExplorer.pairs")
        assert len(pairs) == 1 and pairs[0]["layers"], pairs
        frame.locator("section.pairs").scroll_into_view_if_needed()
        frame.locator("section.pairs").screenshot(path=str(screenshot.with_name("explorer_pairs.png")))


def test_a_live_page_in_the_ui_grows_after_a_refresh(server, browser_page, tmp_path):
    """A run still training: its page, opened through MLflow's UI, says it is live and up to which snapshot; after
    the next refresh is confirmed (the run's tag), reloading shows more snapshots."""
    import signal
    import sys
    import time

    from mlflow_flux.outputs.explorer import PAGE_SNAPSHOT_TAG
    from tests.helpers import default_sigint

    name = f"live-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(server["uri"])
    experiment_id = mlflow.create_experiment(name)
    script = ROOT / "tests" / "scripts" / "watched_loop.py"
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "spool"), "2", "100000", "3"],
                               env=subprocess_env({"uri": server["uri"], "experiment_name": name}),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               preexec_fn=default_sigint)
    client = mlflow.MlflowClient(server["uri"])
    try:
        run_id = process.stdout.readline().split()[1]

        def confirmed(after: int = -1) -> int:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                tag = client.get_run(run_id).data.tags.get(PAGE_SNAPSHOT_TAG)
                if tag is not None and int(tag) > after:
                    return int(tag)
                time.sleep(0.2)
            raise AssertionError("no live page was confirmed")

        first = confirmed()
        url = f"{server['uri']}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/explorer.html" \
              "?workflowType=machine_learning"
        page = browser_page
        frame = _explorer_frame(page, url)
        live = frame.evaluate("() => fluxExplorer.live")
        assert live is not None and live["snapshot"] >= first, live
        assert "Live" in frame.inner_text("header")
        confirmed(live["snapshot"])
        page.reload()
        frame = _explorer_frame(page, url)
        grown = frame.evaluate("() => fluxExplorer.live")
        assert grown["snapshot"] > live["snapshot"] and grown["snapshots"] > live["snapshots"], (live, grown)
        frame.frame_element().screenshot(path=str(_screenshots() / "explorer_live.png"))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    assert client.get_run(run_id).info.status == "KILLED"


def _documented_api() -> set[str]:
    """The names explorer.js's header documents as window.fluxExplorer."""
    header = (ROOT / "mlflow_flux" / "explorer" / "static" / "explorer.js").read_text().split("*/", 1)[0]
    listed = header.split("window.fluxExplorer", 1)[1].split(":", 1)[1]
    listed = re.sub(r"\([^)]*\)", "", re.sub(r"\s*\*\s*", " ", listed))  # one line; names without their arguments
    return {item.strip(" .\n") for item in listed.split(",")}


def test_a_hundred_layer_page_groups_filters_and_sorts_every_layer_in_the_overview(browser_page, tmp_path):
    """100 layers (25 blocks of attention and MLP maps), each block's mlp.c_fc dying half at a planted snapshot:
    the overview draws every layer grouped by block, the filter keeps what it names, sorting by the dead fraction's
    first rise puts the layers in the order they died, and a click opens that layer's heatmap."""
    from tests.synthetic import live_page

    layers = [(f"h.{b}.{part}", 8) for b in range(25) for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                   "mlp.c_proj")]
    died = {f"h.{b}.mlp.c_fc": 5 + (7 * b) % 25 for b in range(25)}  # a different snapshot for each block
    path = tmp_path / "explorer.html"
    path.write_text(live_page(layers, 40, {name: (at, 0.5) for name, at in died.items()}), encoding="utf-8")
    page = browser_page
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_function("document.body.getAttribute('data-ready') === 'true'")
    assert set(page.evaluate("() => Object.keys(window.fluxExplorer)")) == _documented_api()
    rows = page.locator(".layer-row")
    assert rows.count() == 100 and page.locator(".layer-group").count() == 25
    assert page.locator(".layer-group").first.inner_text() == "h.0"
    names = rows.locator(".layer-name").all_inner_texts()
    assert names[:4] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]  # the part that tells them apart
    assert "1 snapshot" not in page.inner_text("body") and "live" in page.inner_text("header").lower()
    # the filter keeps the layers whose names hold every word
    page.fill("input.filter", "mlp c_fc")
    page.wait_for_function("document.querySelectorAll('.layer-row').length === 25")
    page.screenshot(path=str(_screenshots() / "explorer_hundred_layers_filtered.png"), full_page=True)
    page.fill("input.filter", "")
    page.wait_for_function("document.querySelectorAll('.layer-row').length === 100")
    # sorted by when the dead fraction first rises: the c_fc layers in the order they died, then those that never did
    page.evaluate("() => fluxExplorer.select({overviewSort: 'rise'})")
    overview = page.evaluate("() => fluxExplorer.overview")
    assert overview["order"][:25] == sorted(died, key=died.get), overview["order"][:25]
    for name, at in died.items():
        assert at <= overview["rises"][name] <= at + 3, (name, at, overview["rises"][name])  # within a window
    assert all(overview["rises"][name] == -1 for name, _ in layers if name not in died)
    page.evaluate("() => fluxExplorer.select({overviewSort: 'model'})")
    page.screenshot(path=str(_screenshots() / "explorer_hundred_layers.png"))
    # a click on a layer's row opens its heatmap
    page.locator(".layer-row[data-layer='h.17.mlp.c_fc']").click()
    page.wait_for_function("fluxExplorer.drawn.layer === 'h.17.mlp.c_fc'")
    assert page.evaluate("() => fluxExplorer.state.layer") == [n for n, _ in layers].index("h.17.mlp.c_fc")
    assert not errors and not page.evaluate("() => fluxExplorer.errors"), errors
