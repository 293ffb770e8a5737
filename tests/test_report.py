"""``python -m flight_parsl.report``: one self-contained HTML file and its PNGs, drawn from a real
run (thread backend, with a failure and its retry) and from a sweep's results table, opened in
headless Chromium (skipped without it; .ci/run installs Debian's chromium)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import read_csv, run_quietly
from flight_parsl.results import report

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def failed_once_run(tmp_path_factory) -> Path:
    """A tiny real run: digits, 4 clients on 2 thread slots, 3 rounds; client 1's task of round 2
    fails once and is retried."""
    import flight_parsl.engine.sync as engine
    from flight_parsl.config.experiment import build_config

    tmp = tmp_path_factory.mktemp("report")
    real, failed = engine.train_task, []

    def fails_once(ref, round_idx, node, clients, *rest):
        if round_idx == 1 and any(c == 1 for c, _ in clients) and not failed:
            failed.append(1)
            raise RuntimeError("injected failure")
        return real(ref, round_idx, node, clients, *rest)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "train_task", fails_once)
    try:
        def make(*overrides, **values):
            return build_config(values=[{"out": str(tmp / "run"), "backend": "thread", **values}], overrides=list(overrides))

        return run_quietly(make, "round.retries=1", "train.epochs=1", workers=4, rounds=3)
    finally:
        mp.undo()


def _images(page: str) -> dict[str, bytes]:
    return {name: base64.b64decode(data) for name, data in
            re.findall(r'<img class="chart" id="img-([a-z]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)}


def test_run_report_has_every_chart_inlined_and_beside_it(failed_once_run) -> None:
    from flight_parsl.report import main

    rounds = read_csv(failed_once_run / "rounds.csv")
    assert [r["retries"] for r in rounds] == ["0", "1", "0"]  # the run has what the charts must mark
    assert main([str(failed_once_run)]) == 0
    page = (failed_once_run / "report.html").read_text()
    images = _images(page)
    assert list(images) == list(report.RUN_CHARTS)
    for name, png in images.items():
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
        assert (failed_once_run / f"report-{name}.png").read_bytes() == png  # the same PNG beside the HTML
    # self-contained: no request can leave the page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "default-src 'none'" in page
    # the summary, the failure and its retry, the slots by host/pid/thread
    assert "<td>final_test_acc</td>" in page and "completed" in page
    assert "RuntimeError: injected failure" in page and "1 task(s) retried" in page
    assert "1 round(s) with failed clients or retries" in page
    assert re.search(r"\d+ attempts on 2 slots", page)


def test_gantt_lanes_and_idle_time(failed_once_run) -> None:
    run = report.load_run(failed_once_run)
    tasks = report.distinct_tasks(run.tasks)
    lanes = report.slot_labels(tasks)
    ok = tasks["task_status"] == "ok"
    # host/pid/thread: two thread slots of one process
    assert lanes[ok].nunique() == 2 and all(re.fullmatch(r".+/\d+/t\d+", lane) for lane in lanes[ok])
    assert tasks["task_status"].tolist().count("error") == 1  # the failed attempt is one task, whatever its clients
    assert report._union_length([(0, 2), (1, 3), (5, 6)], (0, 10)) == 4
    assert report._union_length([(0, 2), (1, 3), (5, 6)], (2.5, 5.5)) == 1


def test_bytes_grouping(failed_once_run) -> None:
    run = report.load_run(failed_once_run)
    group, frame = report.bytes_per_round(run)
    assert group == "direction" and list(frame.index) == [1, 2, 3]
    rounds = read_csv(failed_once_run / "rounds.csv")
    assert frame.sum(axis=1).tolist() == [float(r["bytes_moved"]) for r in rounds]
    # several sites: grouped per site; site_links: the kernel's counters drawn beside
    tasks = run.tasks.copy()
    tasks["site"] = np.where(tasks["client"] % 2 == 0, "siteA", "siteB")
    sites = report.RunData(run.path, run.rounds, tasks, {**run.summary, "site_links": {"siteB": {"to_host": 10**6, "from_host": 2 * 10**6}}}, "")
    group, frame = report.bytes_per_round(sites)
    assert group == "site" and sorted(frame.columns) == ["siteA", "siteB"]
    assert "kernel counted" in report.chart_bytes(sites).caption
    # rounds.csv link_bytes: the kernel's counters per round, drawn beside instead
    cell = '{"host-a":{"from_host":2000000,"to_host":1000000}}'
    per_round = report.RunData(run.path, run.rounds.assign(link_bytes=[cell, "", cell]), tasks, run.summary, "")
    frame = report.link_bytes_per_round(per_round)
    assert list(frame.index) == [1, 3] and frame.loc[3].to_dict() == {"host-a down": 1e6, "host-a up": 2e6}
    assert "per round (rounds.csv link_bytes" in report.chart_bytes(per_round).caption
    assert report.link_bytes_per_round(run).empty
    # a hierarchy: the train tasks under each node, and each aggregator's own task
    tree = run.tasks.copy()
    tree["node"] = np.where(tree["task"] % 2 == 0, "agg-1-0", "agg-1-1")
    agg = tree.drop_duplicates("round").assign(kind="aggregate", task=-1, client=np.nan, node="agg-1-0")
    import pandas as pd

    tree = report.RunData(run.path, run.rounds, pd.concat([tree, agg]), run.summary, "")
    group, frame = report.bytes_per_round(tree)
    assert group == "edge" and sorted(frame.columns) == ["agg-1-0 -> up", "clients -> agg-1-0", "clients -> agg-1-1"]


def test_dry_run_and_errors(tmp_path, failed_once_run) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "flight_parsl.report", *a], cwd=REPO, capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    done = run(str(failed_once_run), "--out", str(tmp_path / "x.html"), "--dry-run")
    assert done.returncode == 0 and "would read the run" in done.stdout and str(tmp_path / "x-gantt.png") in done.stdout
    assert not (tmp_path / "x.html").exists()
    assert run(str(tmp_path / "nothing"), "--dry-run").returncode == 0  # docs' commands name runs not made yet
    done = run(str(tmp_path / "nothing"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    (tmp_path / "empty").mkdir()
    done = run(str(tmp_path / "empty"))
    assert done.returncode == 2 and "neither a run directory" in done.stderr


def test_sweep_report_draws_the_scaling_curves(tmp_path) -> None:
    from flight_parsl.cli.scale import main as scale
    from flight_parsl.report import main

    results = tmp_path / "results.csv"
    assert scale(["--workers", "2,4", "--rounds", "2", "--quiet", "backend=thread", "train.epochs=1",
                  "--out", str(tmp_path / "sweep"), "--results", str(results)]) == 0
    assert main([str(tmp_path)]) == 0  # the folder that holds results.csv
    page = (tmp_path / "results-report.html").read_text()
    assert list(_images(page)) == list(report.SWEEP_CHARTS)
    assert "2 runs in the table, 2 with status ok" in page
    assert (tmp_path / "results-report-scaling.png").is_file()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120)


@needs_chromium
def test_chromium_renders_the_report_and_shows_every_chart(failed_once_run, tmp_path) -> None:
    from matplotlib.image import imread

    from flight_parsl.report import main

    out = tmp_path / "page.html"
    assert main([str(failed_once_run), "--out", str(out)]) == 0
    dom = _chromium("--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's own check: every embedded chart decoded (naturalWidth > 0), none broken
    assert f'data-charts-shown="{len(report.RUN_CHARTS)}/{len(report.RUN_CHARTS)}"' in dom.stdout, dom.stdout[:500]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
              or "Content Security Policy" in line or "ERR_" in line]
    assert not errors, errors
    shot = tmp_path / "shot.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1200,2600", out.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2600, 1200)
    # not blank: the charts' colours are on the screen (matplotlib's blue bars and lines)
    blue = (np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255).sum(axis=2) < 0.1).mean()
    assert blue > 0.01, blue
    assert (pixels.std(axis=(0, 1)) > 0.05).all()
