"""Tests of flight_parsl.data.download and download_data.py against a local HTTP server.

torchvision is never really imported here: the torchvision path is tested with a fake
``torchvision`` package put into ``sys.modules``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from flight_parsl.data import download as download_module
from flight_parsl.data.datasets import load_dataset
from flight_parsl.data.download import DATASET_FILES, KNOWN_MD5, download_dataset, read_checksums
from flight_parsl.data.idx import read_idx, write_idx
from flight_parsl.core.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "download_data.py"


class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory, logs request paths, and truncates ``/trunc/`` responses."""

    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.requests.append(self.path)
        if self.path.startswith("/trunc/"):
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b\x08\x00partial")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output quiet."""


@pytest.fixture
def mirror(tmp_path) -> dict[str, np.ndarray]:
    """A directory of small generated .gz IDX files; returns the arrays by file name."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, size=30, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, size=12, dtype=np.uint8),
    }
    served = tmp_path / "served"
    served.mkdir()
    for name, array in arrays.items():
        write_idx(served / name, array)
    return arrays


@pytest.fixture
def served(tmp_path, mirror) -> Path:
    return tmp_path / "served"


@pytest.fixture
def md5s(served) -> dict[str, str]:
    return {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in DATASET_FILES}


@pytest.fixture
def server(served) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``served``; yields (base URL, request log)."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_known_checksums_table():
    assert KNOWN_MD5["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert KNOWN_MD5["fashion_mnist"]["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert all(set(table) == set(DATASET_FILES) for table in KNOWN_MD5.values())


def test_download_function_and_skip(tmp_path, server, mirror, md5s):
    url, requests = server
    root = tmp_path / "data"
    lines: list[str] = []
    paths = download_dataset("mnist", root, base_url=url, checksums=md5s, log=lines.append)
    assert paths == [root / "mnist" / name for name in DATASET_FILES]
    for path in paths:
        np.testing.assert_array_equal(read_idx(path), mirror[path.name])
    assert sorted(requests) == sorted(f"/{name}" for name in DATASET_FILES)
    assert leftovers(root / "mnist") == sorted(DATASET_FILES)
    # already present with the right checksum: skipped, no new request
    download_dataset("mnist", root, base_url=url, checksums=md5s, log=lines.append)
    assert len(requests) == 4
    assert sum("present, skipped" in line for line in lines) == 4
    # the loader reads what was downloaded
    data = load_dataset("mnist", root)
    assert data.x_train.shape == (30, 1, 28, 28)
    np.testing.assert_array_equal(data.y_test, mirror["t10k-labels-idx1-ubyte.gz"])


def test_corrupt_present_file_is_replaced(tmp_path, server, mirror, md5s):
    url, requests = server
    target = tmp_path / "data" / "fashion_mnist"
    target.mkdir(parents=True)
    (target / "train-labels-idx1-ubyte.gz").write_bytes(b"junk")
    download_dataset("fashion_mnist", tmp_path / "data", base_url=url, checksums=md5s)
    np.testing.assert_array_equal(
        read_idx(target / "train-labels-idx1-ubyte.gz"), mirror["train-labels-idx1-ubyte.gz"]
    )


def test_default_checksums_reject_other_files(tmp_path, server):
    url, _ = server
    with pytest.raises(DataError) as info:
        download_dataset("mnist", tmp_path / "data", base_url=url)
    message = str(info.value)
    assert "download of train-images-idx3-ubyte.gz failed" in message
    assert f"{url}train-images-idx3-ubyte.gz" in message
    assert "checksum mismatch, expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_wrong_checksum(tmp_path, server, md5s):
    url, _ = server
    wrong = dict(md5s, **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz.*checksum mismatch, expected md5 0{32}, got "):
        download_dataset("mnist", tmp_path / "data", base_url=url, checksums=wrong)
    # the files before it are complete; the bad one and its .part are gone
    assert leftovers(tmp_path / "data" / "mnist") == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_no_verify(tmp_path, server, mirror):
    url, _ = server
    paths = download_dataset("mnist", tmp_path / "data", base_url=url, verify=False)
    np.testing.assert_array_equal(read_idx(paths[0]), mirror[DATASET_FILES[0]])


def test_missing_checksum_entry(tmp_path, server, md5s):
    url, _ = server
    del md5s["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(ConfigError, match="no MD5 checksum given for mnist/t10k-labels-idx1-ubyte.gz"):
        download_dataset("mnist", tmp_path / "data", base_url=url, checksums=md5s)


def test_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'digits'; valid names: fashion_mnist, mnist"):
        download_dataset("digits", tmp_path)


def test_file_url(tmp_path, served, mirror, md5s):
    paths = download_dataset("fashion_mnist", tmp_path / "data", base_url=served.as_uri(), checksums=md5s)
    for path in paths:
        np.testing.assert_array_equal(read_idx(path), mirror[path.name])


def test_file_url_missing_file(tmp_path, served):
    (served / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="download of t10k-labels-idx1-ubyte.gz failed: file://.*No such file"):
        download_dataset("mnist", tmp_path / "data", base_url=served.as_uri() + "/", verify=False)
    assert "t10k-labels-idx1-ubyte.gz" not in leftovers(tmp_path / "data" / "mnist")


def test_truncated_response_leaves_nothing(tmp_path, server):
    url, _ = server
    with pytest.raises(DataError, match="trunc/train-images-idx3-ubyte.gz: incomplete download"):
        download_dataset("mnist", tmp_path / "data", base_url=url + "trunc/", verify=False)
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_connection_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="(?i)connection refused"):
        download_dataset("mnist", tmp_path / "data", base_url=f"http://127.0.0.1:{port}/", timeout=5)
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_read_checksums(tmp_path):
    path = tmp_path / "sums.md5"
    path.write_text("# comment\n" + "A" * 32 + "  mnist/x.gz\n" + "b" * 32 + " *y.gz\n\n")
    assert read_checksums(path) == {"mnist/x.gz": "a" * 32, "y.gz": "b" * 32}
    path.write_text("nothex  x.gz\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_checksums(path)


def test_cli_success_with_md5_file(tmp_path, server, mirror, md5s):
    url, _ = server
    sums = tmp_path / "sums.md5"
    sums.write_text("".join(f"{digest}  fashion_mnist/{name}\n" for name, digest in md5s.items()))
    root = str(tmp_path / "data")
    result = run_cli("--root", root, "--dataset", "fashion_mnist", "--base-url", url, "--md5-file", str(sums))
    assert result.returncode == 0, result.stderr
    assert "fashion_mnist: 4 files ready" in result.stdout
    for name, array in mirror.items():
        np.testing.assert_array_equal(read_idx(tmp_path / "data" / "fashion_mnist" / name), array)


def test_cli_checksum_mismatch(tmp_path, server):
    url, _ = server
    result = run_cli("--root", str(tmp_path / "data"), "--dataset", "mnist", "--base-url", url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "train-images-idx3-ubyte.gz" in lines[0] and "checksum mismatch" in lines[0]
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_cli_404(tmp_path, server, served):
    url, _ = server
    (served / "train-labels-idx1-ubyte.gz").unlink()
    result = run_cli("--root", str(tmp_path / "data"), "--dataset", "mnist", "--base-url", url, "--no-verify")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("download_data.py: error: download of train-labels-idx1-ubyte.gz failed")
    assert f"{url}train-labels-idx1-ubyte.gz: HTTP 404" in lines[0]
    assert leftovers(tmp_path / "data" / "mnist") == ["train-images-idx3-ubyte.gz"]


def test_cli_file_url_all(tmp_path, served, mirror):
    result = run_cli("--root", str(tmp_path / "data"), "--base-url", served.as_uri(), "--no-verify")
    assert result.returncode == 0, result.stderr
    for dataset in ("mnist", "fashion_mnist"):
        assert leftovers(tmp_path / "data" / dataset) == sorted(DATASET_FILES)


def test_cli_runs_from_another_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--base-url" in result.stdout
    assert "--no-torchvision" in result.stdout


# --- the torchvision path, with a fake torchvision package ---------------------------------


def fake_torchvision(monkeypatch, arrays: dict[str, np.ndarray], error: Exception | None = None) -> list[dict]:
    """Put a fake ``torchvision`` into sys.modules; return the list its dataset classes log calls to.

    Like torchvision, a dataset class writes the four .gz files into ``root/<class name>/raw/``
    (skipping those present), or raises ``error`` if given.
    """
    calls: list[dict] = []

    def dataset_class(class_name: str) -> type:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append({"class": class_name, "root": root, "train": train, "download": download})
            if error is not None:
                raise error
            raw = Path(root) / class_name / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for file_name, array in arrays.items():
                if not (raw / file_name).exists():
                    write_idx(raw / file_name, array)

        return type(class_name, (), {"__init__": __init__})

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = dataset_class("MNIST")
    datasets.FashionMNIST = dataset_class("FashionMNIST")
    package = types.ModuleType("torchvision")
    package.__path__ = []
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls


@pytest.fixture
def default_mirror(monkeypatch, server) -> tuple[str, list[str]]:
    """Make the local test server the only default mirror of both datasets."""
    url, requests = server
    for name in ("mnist", "fashion_mnist"):
        monkeypatch.setitem(download_module.MIRRORS, name, (url,))
    return url, requests


@pytest.mark.parametrize(("name", "class_name"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_used_with_default_mirrors(tmp_path, monkeypatch, mirror, md5s, name, class_name):
    calls = fake_torchvision(monkeypatch, mirror)
    root = tmp_path / "data"
    lines: list[str] = []
    paths = download_dataset(name, root, checksums=md5s, log=lines.append)
    assert calls == [
        {"class": class_name, "root": str(root), "train": True, "download": True},
        {"class": class_name, "root": str(root), "train": False, "download": True},
    ]
    raw = root / class_name / "raw"
    assert paths == [raw / file_name for file_name in DATASET_FILES]
    assert all(path.is_file() for path in paths)
    assert not (root / name).exists()
    assert any("with torchvision" in line for line in lines)
    assert sum(line.endswith(": ok") for line in lines) == 4
    data = load_dataset(name, root)
    assert data.x_train.shape == (30, 1, 28, 28)
    np.testing.assert_array_equal(data.y_train, mirror["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(data.y_test, mirror["t10k-labels-idx1-ubyte.gz"])


def test_torchvision_files_are_verified(tmp_path, monkeypatch, mirror):
    fake_torchvision(monkeypatch, mirror)
    root = tmp_path / "data"
    # the generated files do not match the official checksums
    with pytest.raises(DataError) as info:
        download_dataset("mnist", root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("torchvision download of mnist: ")
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    assert "checksum mismatch, expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    # verify=False still requires readable IDX files
    paths = download_dataset("mnist", root, verify=False)
    np.testing.assert_array_equal(read_idx(paths[0]), mirror[DATASET_FILES[0]])
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"torchvision download of mnist: .*t10k-labels-idx1-ubyte.gz: not a valid IDX"):
        download_dataset("mnist", root, verify=False)


def test_torchvision_decompressed_copy_only(tmp_path, monkeypatch, mirror, md5s):
    """Where torchvision kept only the decompressed file, that file is returned (no MD5 to check)."""
    calls = fake_torchvision(monkeypatch, {})
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file_name, array in mirror.items():
        write_idx(raw / file_name.removesuffix(".gz"), array)
    lines: list[str] = []
    paths = download_dataset("mnist", tmp_path, checksums=md5s, log=lines.append)
    assert len(calls) == 2
    assert paths == [raw / file_name.removesuffix(".gz") for file_name in DATASET_FILES]
    assert sum("md5 not checked" in line for line in lines) == 4


def test_no_torchvision_option(tmp_path, monkeypatch, mirror, md5s, server, default_mirror):
    calls = fake_torchvision(monkeypatch, mirror)
    url, requests = server
    root = tmp_path / "data"
    paths = download_dataset("mnist", root, base_url=url, checksums=md5s, use_torchvision=False)
    assert paths == [root / "mnist" / file_name for file_name in DATASET_FILES]
    # the default mirrors, too
    paths = download_dataset("fashion_mnist", root, checksums=md5s, use_torchvision=False)
    assert paths == [root / "fashion_mnist" / file_name for file_name in DATASET_FILES]
    assert calls == []
    assert len(requests) == 8
    assert not (root / "MNIST").exists() and not (root / "FashionMNIST").exists()


def test_base_url_bypasses_torchvision(tmp_path, monkeypatch, mirror, md5s, server):
    calls = fake_torchvision(monkeypatch, mirror)
    url, requests = server
    paths = download_dataset("mnist", tmp_path / "data", base_url=url, checksums=md5s)
    assert calls == []
    assert len(requests) == 4
    assert all(path.parent == tmp_path / "data" / "mnist" for path in paths)


def test_files_already_present_skip_torchvision(tmp_path, monkeypatch, mirror, md5s, server):
    url, requests = server
    root = tmp_path / "data"
    download_dataset("mnist", root, base_url=url, checksums=md5s)
    calls = fake_torchvision(monkeypatch, mirror)
    lines: list[str] = []
    paths = download_dataset("mnist", root, checksums=md5s, log=lines.append)
    assert calls == []
    assert paths == [root / "mnist" / file_name for file_name in DATASET_FILES]
    assert sum("present, skipped" in line for line in lines) == 4


def test_torchvision_failure_falls_back_to_urllib(tmp_path, monkeypatch, mirror, md5s, default_mirror):
    url, requests = default_mirror
    error = RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example/, got:\nHTTP 503")
    calls = fake_torchvision(monkeypatch, mirror, error=error)
    root = tmp_path / "data"
    lines: list[str] = []
    paths = download_dataset("mnist", root, checksums=md5s, log=lines.append)
    assert len(calls) == 1 and calls[0]["class"] == "MNIST"
    assert paths == [root / "mnist" / file_name for file_name in DATASET_FILES]
    for path in paths:
        np.testing.assert_array_equal(read_idx(path), mirror[path.name])
    assert sorted(requests) == sorted(f"/{file_name}" for file_name in DATASET_FILES)
    fallback = [line for line in lines if "falling back to urllib" in line]
    assert fallback == [
        "torchvision download of mnist failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz: "
        "Tried https://example/, got: HTTP 503); falling back to urllib"
    ]


class _BrokenTorchvisionFinder:
    """Makes ``import torchvision`` fail as a CUDA build does next to a CPU torch."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            raise OSError("libcudart.so.12: cannot open shared object file: No such file or directory")
        return None


def test_torchvision_that_does_not_import_falls_back_silently(tmp_path, monkeypatch, mirror, md5s, default_mirror):
    url, requests = default_mirror
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.delitem(sys.modules, "torchvision.datasets", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvisionFinder(), *sys.meta_path])
    lines: list[str] = []
    paths = download_dataset("mnist", tmp_path / "data", checksums=md5s, log=lines.append)
    assert paths == [tmp_path / "data" / "mnist" / file_name for file_name in DATASET_FILES]
    assert len(requests) == 4
    assert not any("with torchvision" in line or "falling back" in line for line in lines)


def load_cli_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("download_data_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_torchvision_and_no_torchvision(tmp_path, monkeypatch, mirror, default_mirror, capsys):
    url, requests = default_mirror
    calls = fake_torchvision(monkeypatch, mirror)
    cli = load_cli_module()
    root = str(tmp_path / "data")
    assert cli.main(["--root", root, "--dataset", "mnist", "--no-torchvision", "--no-verify"]) == 0
    assert calls == [] and len(requests) == 4
    assert "mnist: 4 files ready in " + str(tmp_path / "data" / "mnist") in capsys.readouterr().out
    assert cli.main(["--root", root, "--dataset", "fashion_mnist", "--no-verify"]) == 0
    assert [call["train"] for call in calls] == [True, False] and len(requests) == 4
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert f"fashion_mnist: 4 files ready in {raw}" in capsys.readouterr().out
