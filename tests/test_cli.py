"""The command line: a run, and one clear message with exit status 2 for bad input."""

import subprocess
import sys

import pytest

from conftest import read_csv


def scale(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flight_parsl.scale", *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_cli_run_writes_the_run_directory_and_prints_progress(tmp_path) -> None:
    out = tmp_path / "run"
    done = scale("--workers", "2", "--rounds", "2", "--backend", "thread", "--model", "logreg", "--out", str(out), "train.epochs=1")
    assert done.returncode == 0, done.stderr
    assert "round 1/2  clients 2/2" in done.stderr and "round 2/2" in done.stderr
    assert "prime2end" in done.stderr
    assert len(read_csv(out / "tasks.csv")) == 4
    assert "epochs: 1" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "resnet19"], "config: key 'model.name' = 'resnet19': unknown model; valid names:"),
        (["--dataset", "mnist", "data.root=DATA"], "download_data.py"),
        (["--dataset", "mnist"], "data root"),
        (["train.epochz=2"], "config: unknown key 'train.epochz'; allowed keys in train:"),
        (["--strategy", "fedmagic"], "valid names: avgpush, fedasync, fedavg, fedbuff, fedmedian, fedprox, fedsgd, fml, joint, proxyfl, regular"),
        (["--parsl-config", "no/such/site.yaml"], "no/such/site.yaml"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, args, needle) -> None:
    args = [a.replace("DATA", str(tmp_path / "data")) for a in args]
    done = scale("--workers", "2", "--rounds", "1", "--out", str(tmp_path / "run"), *args)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr
