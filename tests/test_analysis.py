"""analysis/: summary, scaling and ratio figures, the CLI and the headless notebook."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")  # the analysis extra; CI's dev extra installs it

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib.image  # noqa: E402
import nbformat  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from analysis import run_notebook as rn  # noqa: E402
from analysis import scaling  # noqa: E402
from flight_parsl.results.table import append_row  # noqa: E402

SERIES = [("flight_parsl", "parsl", 1.0), ("flight_parsl", "redis", 0.5), ("flower-simulation", "ray", 2.0), ("flower-grpc", "grpc", 3.0)]
LABELS = ["flight_parsl/parsl", "flight_parsl/redis", "flower-simulation", "flower-grpc"]
MODELS = {"resnet18": 10.0, "tiny": 0.1}  # written resnet18 first: the figure must reorder them
WORKERS = [2, 8, 32]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def prime2end(base: float, factor: float, workers: int, trial: int) -> float:
    return base * factor * workers + trial


def row(framework, transfer, model, workers, trial, value, status="ok"):
    return {
        "framework": framework, "model": model, "num_workers": workers, "transfer": transfer, "trial": trial,
        "train": "none", "rounds": 2, "start": 1000.0, "end": 1000.0 + value + 10,
        "prime2end": value, "start2end": value + 10, "round_makespan_s": value / 2,
        "bytes_moved": 1000 * workers, "peak_rss_mb": 100 + 20 * trial, "peak_rss_workers_mb": 50 * workers,
        "status": status, "run_dir": f"runs/{framework}-{model}-{workers}-{trial}",
    }


def write_table(path: Path) -> Path:
    """2 trials of every cell, except flower-grpc/resnet18/32 (trial 1 failed); failed rows must be ignored."""
    for fw, tr, base in SERIES:
        for model, factor in MODELS.items():
            for w in WORKERS:
                for t in (0, 1):
                    failed = (fw, model, w, t) == ("flower-grpc", "resnet18", 32, 1)
                    if (fw, tr, model, w, t) == ("flight_parsl", "redis", "resnet18", 2, 1):
                        append_row(path, row(fw, tr, model, w, t, 1e6, status="failed: worker lost"))  # then rerun ok
                    append_row(path, row(fw, tr, model, w, t, 1e6 if failed else prime2end(base, factor, w, t),
                                         status="failed: timeout" if failed else "ok"))
    append_row(path, row("flight_parsl", "parsl", "tiny", 8, 2, 1e6, status="failed: boom"))
    append_row(path, row("flight_parsl", "parsl", "resnet50", 8, 0, 1e6, status="failed: out of memory"))
    return path


@pytest.fixture
def table(tmp_path) -> Path:
    return write_table(tmp_path / "results.csv")


def check_png(path: Path, min_w: int = 600, min_h: int = 300) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min_w <= w <= 6000 and min_h <= h <= 6000, img.shape
    assert img[..., :3].std() > 0.05  # not a blank canvas


def run(*args: str, cwd: Path = ROOT, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# --------------------------------------------------------------------------- load, summarize


def test_load_keeps_only_ok_rows(table) -> None:
    frame = scaling.load_results(table)
    assert set(frame["status"]) == {"ok"}
    assert len(frame) == 4 * 2 * 3 * 2 - 1  # one cell lost its second trial
    assert frame["prime2end"].max() < 1e6
    assert "resnet50" not in set(frame["model"])
    assert frame["num_workers"].dtype.kind == "i"


def test_load_errors_name_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="not found: .*nope.csv"):
        scaling.load_results(missing)
    bad = tmp_path / "failed.csv"
    append_row(bad, row("flight_parsl", "parsl", "tiny", 2, 0, 1.0, status="failed: x"))
    with pytest.raises(ValueError, match=r"no rows with status 'ok' in .*failed.csv"):
        scaling.load_results(bad)


def test_summarize_matches_a_hand_computation(table) -> None:
    summary = scaling.summarize(scaling.load_results(table))
    assert len(summary) == 4 * 2 * 3
    assert summary["trials"].sum() == 47
    cell = summary.set_index(scaling.GROUP_KEYS)

    # flight_parsl/parsl/tiny/8: trials 0.8 and 1.8 (the failed trial 2 with 1e6 is ignored)
    c = cell.loc[("flight_parsl", "parsl", "tiny", 8)]
    assert c["trials"] == 2
    assert c["prime2end_mean"] == pytest.approx(1.3)
    assert c["prime2end_std"] == pytest.approx(math.sqrt(0.5))
    assert c["round_makespan_s_mean"] == pytest.approx(0.65)
    assert c["start2end_mean"] == pytest.approx(11.3)
    assert c["peak_rss_mb_mean"] == pytest.approx(110.0)
    assert c["peak_rss_mb_std"] == pytest.approx(math.sqrt(200))
    assert c["peak_rss_workers_mb_mean"] == pytest.approx(400.0)
    assert c["peak_rss_workers_mb_std"] == pytest.approx(0.0)

    # a failed first attempt of trial 1, then an ok rerun: 10 and 11
    c = cell.loc[("flight_parsl", "redis", "resnet18", 2)]
    assert (c["trials"], c["prime2end_mean"]) == (2, pytest.approx(10.5))

    # trial 1 failed: one trial, no std
    c = cell.loc[("flower-grpc", "grpc", "resnet18", 32)]
    assert c["trials"] == 1 and c["prime2end_mean"] == pytest.approx(960.0) and math.isnan(c["prime2end_std"])

    # every cell against plain Python
    for fw, tr, base in SERIES:
        for model, factor in MODELS.items():
            for w in WORKERS:
                trials = [0] if (fw, model, w) == ("flower-grpc", "resnet18", 32) else [0, 1]
                values = [prime2end(base, factor, w, t) for t in trials]
                c = cell.loc[(fw, tr, model, w)]
                assert c["trials"] == len(values)
                assert c["prime2end_mean"] == pytest.approx(statistics.mean(values))
                if len(values) > 1:
                    assert c["prime2end_std"] == pytest.approx(statistics.stdev(values))


def test_summary_rows_come_in_figure_order(table) -> None:
    summary = scaling.summarize(scaling.load_results(table))
    first = summary.iloc[:6]
    assert list(first["framework"]) == ["flight_parsl"] * 6 and list(first["transfer"]) == ["parsl"] * 6
    assert list(first["model"]) == ["tiny"] * 3 + ["resnet18"] * 3
    assert list(first["num_workers"]) == WORKERS * 2
    assert list(dict.fromkeys(summary["framework"])) == ["flight_parsl", "flower-simulation", "flower-grpc"]


def test_model_order() -> None:
    got = scaling.model_order(["resnet152", "mlp", "tiny", "lenet5", "resnet18", "squeezenet1_0", "smallnet", "resnet50"])
    assert got == ["tiny", "smallnet", "squeezenet1_0", "resnet18", "resnet50", "resnet152", "lenet5", "mlp"]


# --------------------------------------------------------------------------- figures


def test_plot_scaling_has_a_panel_per_model_and_a_line_per_series(table, tmp_path) -> None:
    frame = scaling.load_results(table)
    out = tmp_path / "figs" / "scaling.png"
    fig = scaling.plot_scaling(frame, out=out)
    assert [ax.get_title() for ax in fig.axes] == ["tiny", "resnet18"]  # resnet50 had only failed rows
    summary = scaling.summarize(frame).set_index(scaling.GROUP_KEYS)
    for ax in fig.axes:
        containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert [c.get_label() for c in containers] == LABELS
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert ax.xaxis.get_transform().base == 2
        assert list(ax.get_xticks()) == WORKERS
        for c, (fw, tr, _) in zip(containers, SERIES):
            x, y = c.lines[0].get_data()
            assert list(x) == WORKERS
            want = [summary.loc[(fw, tr, ax.get_title(), w), "prime2end_mean"] for w in WORKERS]
            assert list(y) == pytest.approx(want)
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == LABELS
    assert "prime2end" in fig.get_suptitle()
    check_png(out)


def test_plot_scaling_other_metric_and_single_model(table) -> None:
    frame = scaling.load_results(table)
    fig = scaling.plot_scaling(frame[frame["model"] == "tiny"], metric="round_makespan_s")
    assert [ax.get_title() for ax in fig.axes] == ["tiny"]
    assert "makespan" in fig.axes[0].get_ylabel()
    y = fig.axes[0].containers[0].lines[0].get_ydata()
    assert list(y) == pytest.approx([(0.2 + 0.5) / 2, (0.8 + 0.5) / 2, (3.2 + 0.5) / 2])
    with pytest.raises(ValueError, match="unknown metric 'bytes'"):
        scaling.plot_scaling(frame, metric="bytes")


def test_plot_scaling_grid_keeps_one_axes_per_model(table) -> None:
    import pandas as pd

    frame = scaling.load_results(table)
    more = pd.concat([frame, frame.assign(model="mlp"), frame.assign(model="smallnet"), frame.assign(model="resnet152")])
    fig = scaling.plot_scaling(more)  # 5 panels on a 2 x 3 grid: the empty slot is removed
    assert [ax.get_title() for ax in fig.axes] == ["tiny", "smallnet", "resnet18", "resnet152", "mlp"]
    assert all(len(ax.containers) == 4 for ax in fig.axes)
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "workers", "workers", "workers"]


def test_ratio_table_and_figure(table, tmp_path) -> None:
    frame = scaling.load_results(table)
    ratios = scaling.ratio_table(frame).set_index(["model", "num_workers"])
    assert list(ratios.index) == [(m, w) for m in ("tiny", "resnet18") for w in WORKERS]
    assert set(ratios["best_transfer"]) == {"redis"}
    # tiny, 2 workers: flower-simulation 0.4 and 1.4 -> 0.9; redis 0.1 and 1.1 -> 0.6
    assert ratios.loc[("tiny", 2), "ratio"] == pytest.approx(0.9 / 0.6)
    assert ratios.loc[("resnet18", 32), "ratio"] == pytest.approx(640.5 / 160.5)
    out = tmp_path / "ratio.png"
    fig = scaling.plot_ratio(frame, out=out)
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["tiny", "resnet18", "best: redis"]
    check_png(out, min_w=500)
    with pytest.raises(ValueError, match="no ok rows of 'flower-nope'"):
        scaling.ratio_table(frame, baseline="flower-nope")


def test_packed_rows_are_a_series_of_their_own(table, tmp_path) -> None:
    """flight_parsl rows on fewer slots than clients are 'flight_parsl/<transfer>+packed': their own
    cells and line (dotted, the transfer's marker); the ratio ignores them unless asked."""
    for w in WORKERS:
        for t in (0, 1):
            packed = row("flight_parsl", "redis", "tiny", w, t, 0.01)  # faster than every other series
            append_row(table, {**packed, "slots": 2 if w > 2 else w})  # 2 workers on 2 slots: not packed
    append_row(table, {**row("flight_parsl", "parsl", "tiny", 8, 3, 0.9), "slots": 8})  # one slot per client
    frame = scaling.load_results(table)
    assert set(frame["transfer"]) == {"parsl", "redis", "redis+packed", "ray", "grpc"}
    summary = scaling.summarize(frame).set_index(scaling.GROUP_KEYS)
    assert summary.loc[("flight_parsl", "redis+packed", "tiny", 8), "trials"] == 2
    assert summary.loc[("flight_parsl", "parsl", "tiny", 8), "trials"] == 3
    assert summary.loc[("flight_parsl", "redis", "tiny", 2), "trials"] == 4  # slots == workers: not packed
    labels = scaling.series_labels(scaling.summarize(frame))
    assert list(labels.values()) == [
        "flight_parsl/parsl", "flight_parsl/redis", "flight_parsl/redis+packed", "flower-simulation", "flower-grpc",
    ]
    fig = scaling.plot_scaling(frame)
    line = next(c for c in fig.axes[0].containers if c.get_label() == "flight_parsl/redis+packed").lines[0]
    assert line.get_linestyle() == ":" and line.get_marker() == scaling.MARKERS["redis"]
    assert list(line.get_xdata()) == [8, 32]
    plain = scaling.ratio_table(frame).set_index(["model", "num_workers"])
    assert set(plain["best_transfer"]) == {"redis"}
    both = scaling.ratio_table(frame, packed=True).set_index(["model", "num_workers"])
    assert both.loc[("tiny", 8), "best_transfer"] == "redis+packed"
    assert both.loc[("tiny", 2), "best_transfer"] == "redis"


def test_default_sweep_draws_one_line_per_transfer(tmp_path) -> None:
    """A default (slots=auto) 2-and-8-worker sweep on 2 slots: 2 workers run one slot each, 8 are packed
    onto 2. Each transfer is one line of two points (the packed one hollow), not two one-point series."""
    table = tmp_path / "results.csv"
    for transfer, base in (("parsl", 1.0), ("redis", 0.5)):
        for w in (2, 8):
            for t in (0, 1):
                append_row(table, {**row("flight_parsl", transfer, "tiny", w, t, prime2end(base, 1.0, w, t)), "slots": 2})
    frame = scaling.load_results(table)
    assert set(frame["transfer"]) == {"parsl", "redis"}
    assert list(frame.groupby("num_workers")["packed"].all()) == [False, True]
    summary = scaling.summarize(frame)
    assert len(summary) == 4 and list(summary["trials"]) == [2, 2, 2, 2]
    assert list(summary["packed"]) == [False, True, False, True]
    assert list(scaling.series_labels(summary).values()) == ["flight_parsl/parsl", "flight_parsl/redis"]
    fig = scaling.plot_scaling(frame)
    lines = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}
    assert set(lines) == {"flight_parsl/parsl", "flight_parsl/redis"}
    for label, base in (("flight_parsl/parsl", 1.0), ("flight_parsl/redis", 0.5)):
        line = lines[label]
        assert list(line.get_xdata()) == [2, 8] and line.get_linestyle() == "-"
        expected = [statistics.fmean(prime2end(base, 1.0, w, t) for t in (0, 1)) for w in (2, 8)]
        assert list(line.get_ydata()) == pytest.approx(expected)
    hollow = [ln for ln in fig.axes[0].lines if ln.get_markerfacecolor() == "white"]
    assert sorted(list(ln.get_xdata()) for ln in hollow) == [[8], [8]]  # the packed point of each line
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["flight_parsl/parsl", "flight_parsl/redis", "hollow: clients packed onto fewer slots"]
    # the ratio compares Flower with one-slot-per-client points only, unless asked
    for w in (2, 8):
        append_row(table, row("flower-simulation", "ray", "tiny", w, 0, prime2end(2.0, 1.0, w, 0)))
    frame = scaling.load_results(table)
    assert list(scaling.ratio_table(frame)["num_workers"]) == [2]
    both = scaling.ratio_table(frame, packed=True).set_index("num_workers")
    assert list(both.index) == [2, 8] and both.loc[8, "best_transfer"] == "redis"
    assert both.loc[8, "ratio"] == pytest.approx(prime2end(2.0, 1.0, 8, 0) / statistics.fmean(
        prime2end(0.5, 1.0, 8, t) for t in (0, 1)))


# --------------------------------------------------------------------------- CLI


def test_cli_dry_run_writes_nothing(table, tmp_path) -> None:
    out = tmp_path / "never.png"
    done = run("-m", "analysis.scaling", str(tmp_path / "later.csv"), "--out", str(out), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "(not there yet)" in done.stdout and "dry run: nothing written" in done.stdout and not out.exists()
    done = run("-m", "analysis.scaling", str(table), "--out", str(out), "--metric", "nope", "--dry-run")
    assert done.returncode == 2 and "unknown metric 'nope'" in done.stderr
    done = run("analysis/run_notebook.py", "analysis/scaling.ipynb", "--param", f"out={tmp_path}/f.png", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"write {tmp_path}/f.executed.ipynb" in done.stdout and not (tmp_path / "f.executed.ipynb").exists()
    done = run("analysis/run_notebook.py", "analysis/scaling.ipynb", "--param", "nope=1", "--dry-run")
    assert done.returncode == 2 and "unknown parameter 'nope'" in done.stderr


def test_cli_in_process_writes_figures_and_prints_the_summary(table, tmp_path, capsys) -> None:
    out, ratio = tmp_path / "a" / "fig.png", tmp_path / "ratio.png"
    assert scaling.main([str(table), "--out", str(out), "--ratio-out", str(ratio), "--metric", "start2end"]) == 0
    printed = capsys.readouterr().out
    for needle in ("prime2end_mean", "trials", "flower-simulation", "flower-grpc", "resnet18", "best_transfer", "11.3"):
        assert needle in printed
    check_png(out)
    check_png(ratio, min_w=500)


def test_format_table_falls_back_without_tabulate(table, monkeypatch) -> None:
    import pandas as pd

    def no_tabulate(*_a, **_k):
        raise ImportError("Missing optional dependency 'tabulate'")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", no_tabulate)
    text = scaling.format_table(scaling.summarize(scaling.load_results(table)))
    assert "prime2end_mean" in text and "flight_parsl" in text and "|" not in text


def test_cli_subprocess(table, tmp_path) -> None:
    out = tmp_path / "fig.png"
    done = run("-m", "analysis.scaling", str(table), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "prime2end_mean" in done.stdout and "flight_parsl" in done.stdout and f"wrote {out}" in done.stdout
    check_png(out)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "results table not found"),
        ("failed-only", "no rows with status 'ok'"),
        ("metric", "unknown metric 'bytes_moved'"),
        ("baseline", "no ok rows of 'flower-nope'"),
        ("no-out", "the following arguments are required: --out"),
    ],
)
def test_cli_errors_exit_2_with_one_line(table, tmp_path, case, needle) -> None:
    path = {"missing": tmp_path / "missing.csv", "failed-only": tmp_path / "failed.csv"}.get(case, table)
    if case == "failed-only":
        append_row(path, row("flight_parsl", "parsl", "tiny", 2, 0, 1.0, status="failed: x"))
    args = [str(path)] + ([] if case == "no-out" else ["--out", str(tmp_path / "f.png")])
    args += {"metric": ["--metric", "bytes_moved"], "baseline": ["--ratio-out", str(tmp_path / "r.png"), "--baseline", "flower-nope"]}.get(case, [])
    done = run("-m", "analysis.scaling", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    if case in ("missing", "failed-only"):
        assert str(path) in lines[0]


# --------------------------------------------------------------------------- notebook

NOTEBOOK = ROOT / "analysis" / "scaling.ipynb"


def test_committed_notebook_is_clean_and_parameterized() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = rn.parameters_cell(nb)
    assert params is code[0]
    defaults = rn.parameter_defaults(params.source)
    assert defaults["results"] == '"runs/scaling/results.csv"' and defaults["out"] == '"runs/scaling.png"'


def test_inject_parameters_rewrites_the_tagged_cell() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    effective = rn.inject_parameters(nb, {"out": "x/y.png"})
    src = rn.parameters_cell(nb).source
    assert "out = 'x/y.png'" in src and 'results = "runs/scaling/results.csv"' in src
    assert effective["out"] == "x/y.png" and effective["results"] == "runs/scaling/results.csv"
    assert rn.default_output(NOTEBOOK, effective) == Path("x/y.executed.ipynb")
    with pytest.raises(rn.ParameterError, match="unknown parameter 'outt'"):
        rn.inject_parameters(nb, {"outt": "z"})


def test_run_notebook_rejects_unknown_parameters(tmp_path) -> None:
    done = run("analysis/run_notebook.py", str(NOTEBOOK), "--param", "resultz=x.csv", "--param", f"out={tmp_path}/f.png")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown parameter 'resultz'" in lines[0] and "results, out" in lines[0]


def test_notebook_runs_headless(table, tmp_path) -> None:
    out = tmp_path / "figs" / "scaling.png"
    done = run("analysis/run_notebook.py", "analysis/scaling.ipynb", "--param", f"results={table}", "--param", f"out={out}",
               timeout=240)
    assert done.returncode == 0, done.stderr
    check_png(out)
    executed = out.parent / "scaling.executed.ipynb"
    assert f"wrote {executed}" in done.stdout
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("47 ok rows, 24 cells" in o.get("text", "") for o in outputs)
    assert f"results = {str(table)!r}" in rn.parameters_cell(nb).source


def test_notebook_failure_exits_1_and_names_the_error(tmp_path) -> None:
    missing = tmp_path / "none.csv"
    done = run("analysis/run_notebook.py", "analysis/scaling.ipynb", "--param", f"results={missing}",
               "--param", f"out={tmp_path}/f.png", timeout=240)
    assert done.returncode == 1
    assert "ValueError: results table not found" in done.stderr and str(missing) in done.stderr
    assert (tmp_path / "f.executed.ipynb").is_file() and not (tmp_path / "f.png").exists()
