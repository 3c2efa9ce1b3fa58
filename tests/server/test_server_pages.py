"""The pages in headless Chromium: live charts fill in as a run streams; symbio views render."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_train_args
from tests.server.conftest import SECRET, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip("Debian's chromium is not installed (run scripts/ci-system-deps.sh)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(tmp_path_factory.mktemp("pages")).start()
    yield proc
    proc.stop()


def points(page, run_id: str, chart: str) -> int:
    value = page.get_attribute(f'section[data-run="{run_id}"] canvas[data-chart="{chart}"]', "data-points")
    return int(value or 0)


def test_training_page_draws_points_as_metrics_stream_in(browser, server: ServerProcess) -> None:
    run_id = "chat_20260101000000_live"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/training")
    page.wait_for_selector("#conn.ok", timeout=15_000)
    assert page.is_visible("#empty")  # nothing streams yet

    client = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "stream_client.py"), server.url, run_id, "60", "0.1"],
        env={**os.environ, "ALPHA_REMOTE_SECRET": SECRET},
    )
    try:
        card = f'section[data-run="{run_id}"]'
        loss = f'{card} canvas[data-chart="loss"]'
        page.wait_for_selector(card, timeout=15_000)
        page.wait_for_function(
            f"() => Number(document.querySelector('{loss}').dataset.points) >= 1",
            timeout=15_000,
        )
        first = points(page, run_id, "loss")
        page.wait_for_function(
            f"() => Number(document.querySelector('{loss}').dataset.points) > {first + 5}",
            timeout=20_000,
        )
        assert points(page, run_id, "tps") >= 1 and points(page, run_id, "lr") >= 1
        page.wait_for_function(
            f"() => document.querySelector('{card} .alerts').textContent.includes('spike_skip')",
            timeout=15_000,
        )
        page.wait_for_function(
            f"() => document.querySelector('{card} .samples').textContent.includes('step')", timeout=15_000
        )
        assert client.wait(30) == 0
        page.wait_for_function(
            f"() => document.querySelector('{card} .status').textContent === 'completed'", timeout=10_000
        )
        assert points(page, run_id, "loss") == 60
    finally:
        if client.poll() is None:
            client.kill()
        page.close()

    page = browser.new_page()
    page.goto(server.url + "/runs")
    row = page.locator(f'tr[data-run="{run_id}"]')
    assert "completed" in row.inner_text() and "60 / 60" in row.inner_text()
    page.close()


def test_run_page_shows_symbio_candidates_and_lineage(browser, server: ServerProcess) -> None:
    run_id = "novels_20260101000000_sym1"
    with server.client() as http:
        http.post(
            "/api/ingest",
            json={
                "type": "run_start",
                "runId": run_id,
                "domain": "novels",
                "totalParams": 98_000,
                "modelConfig": {"nLayer": 2, "nEmbd": 32, "nHead": 2, "ffnActivation": "composed"},
                "trainConfig": {
                    "iters": 90,
                    "symbio": True,
                    "symbioConfig": {"searchMode": "composed-activation-search"},
                },
            },
        ).raise_for_status()
        http.post(
            "/api/ingest",
            json={
                "type": "metrics",
                "runId": run_id,
                "metrics": [
                    {
                        "step": s,
                        "loss": 5 - s / 30,
                        "lr": 1e-3,
                        "gradNorm": 1.0,
                        "elapsed_ms": 9,
                        "tokens_per_sec": 9000,
                        "ms_per_iter": 9,
                        "symbio_candidate_id": f"c{s // 30}",
                        "symbio_generation": s // 30,
                    }
                    for s in range(1, 91)
                ],
            },
        ).raise_for_status()
        parents = {0: [None, None], 1: ["g0c0", "g0c1"], 2: ["g1c0", "g1c0"]}
        for gen in range(3):
            candidates = [
                {
                    "id": f"g{gen}c{i}",
                    "name": f"gen{gen}_cand{i}",
                    "activation": ["(relu+0.04·sq)×gelu", "silu"][i],
                    "generation": gen,
                    "parentId": parents[gen][i],
                    "parentName": parents[gen][i],
                    "lineage": [],
                    "activationGraph": {"type": "basis", "op": "silu"},
                    "mutationApplied": "swap" if gen else None,
                    "bestLoss": 4.0 - gen / 3 - i / 10,
                    "bestValLoss": 4.2 - gen / 3 - i / 10,
                    "valLoss": None,
                    "fitnessScore": 0.5 + gen / 10,
                    "steps": 30,
                    "tokensPerSec": 9100.0 + i,
                    "alive": True,
                }
                for i in range(2)
            ]
            http.post(
                "/api/ingest",
                json={
                    "type": "event",
                    "runId": run_id,
                    "event": {
                        "id": f"{run_id}-gen-{gen}",
                        "step": 30 * (gen + 1),
                        "kind": "symbio_generation",
                        "message": f"generation {gen}",
                        "payload": {
                            "generation": gen,
                            "candidates": candidates,
                            "winner": candidates[1],
                            "bestValLoss": candidates[1]["bestValLoss"],
                        },
                    },
                },
            ).raise_for_status()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    response = page.goto(f"{server.url}/runs/{run_id}")
    assert response.status == 200
    rows = page.locator("#candidates tbody tr")
    assert rows.count() == 6
    text = page.inner_text("#candidates")
    assert "(relu+0.04·sq)×gelu" in text and "gen1_cand1" in text and "g1c0" in text
    assert page.locator("#candidates tr.winner").inner_text().startswith("2\tgen2_cand1")
    assert page.locator("svg.lineage g.node").count() == 6
    assert page.locator("svg.lineage path.edge").count() == 4
    page.wait_for_function(
        "() => Number(document.querySelector('canvas[data-chart=\"generations\"]').dataset.points) === 3"
    )
    assert int(page.get_attribute('canvas[data-chart="loss"]', "data-points")) == 90
    page.close()

    page = browser.new_page()
    page.goto(server.url + "/runs")
    assert "gen2_cand1" in page.locator(f'tr[data-run="{run_id}"]').inner_text()  # the symbio winner column
    page.close()


@pytest.mark.skipif(
    importlib.util.find_spec("alpha.sinks.remote") is None,
    reason="the trainer's remote reporter (alpha/sinks/remote.py) is not in this tree yet",
)
def test_training_page_follows_a_real_training_run(
    browser, server: ServerProcess, chat_file, tmp_path
) -> None:
    run_id = "tiny_chat_live"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/training")
    page.wait_for_selector("#conn.ok", timeout=15_000)
    args = tiny_train_args(
        chat_file, tmp_path / run_id, "--iters", "60", "--eval-interval", "20", "--sample-interval", "30"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ALPHA_REMOTE_URL": server.url,
        "ALPHA_REMOTE_SECRET": SECRET,
        "ALPHA_REMOTE_FLUSH_SECONDS": "0.5",
    }
    trainer = subprocess.Popen(
        [sys.executable, "-m", "alpha", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        card = f'section[data-run="{run_id}"]'
        loss = f'{card} canvas[data-chart="loss"]'
        page.wait_for_selector(card, timeout=120_000)
        page.wait_for_function(
            f"() => Number(document.querySelector('{loss}').dataset.points) >= 1", timeout=120_000
        )
        output, _ = trainer.communicate(timeout=240)
        assert trainer.returncode == 0, output
        page.wait_for_function(
            f"() => document.querySelector('{card} .status').textContent === 'completed'", timeout=30_000
        )
        assert points(page, run_id, "loss") == 60
        assert SECRET not in output and server.url not in output  # secrets never printed
    finally:
        if trainer.poll() is None:
            trainer.kill()
        page.close()
