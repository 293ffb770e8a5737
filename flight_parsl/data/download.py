"""Downloading the IDX files of MNIST and Fashion-MNIST, with MD5 verification.

With the default mirrors and torchvision importable, torchvision's own dataset
class downloads the files into its layout ``root/MNIST/raw/`` or
``root/FashionMNIST/raw/`` (which ``load_dataset`` also reads), and they are then
checked here (MD5 of the ``.gz`` files, readable IDX). Otherwise (no torchvision,
it fails, ``use_torchvision=False`` or a ``base_url``) plain urllib fetches them into
``root/<name>/`` through a ``.part`` file that is checked (size, MD5, readable IDX)
before it is renamed into place and removed on any failure; base URLs may be
http(s):// or file://. Present files that pass the check are skipped.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from flight_parsl.data.idx import read_idx
from flight_parsl.core.errors import ConfigError, DataError, unknown_name

#: The four files of each dataset, in download order.
DATASET_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: Default mirrors, tried in order.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: The MD5 checksums torchvision uses for the official files.
KNOWN_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcc592d23d5",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

#: torchvision's dataset class of each dataset; its name is also the folder under the root.
TORCHVISION_CLASSES: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

_USER_AGENT = "flight_parsl-download/0.1"
_CHUNK = 1 << 16


class _FetchError(Exception):
    """One URL failed; the message is the reason."""


def downloadable_names() -> list[str]:
    """Return the dataset names ``download_dataset`` accepts, sorted."""
    return sorted(MIRRORS)


def download_dataset(
    name: str,
    root: str | Path,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
    verify: bool = True,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
    use_torchvision: bool = True,
) -> list[Path]:
    """Download the four IDX files of a dataset into ``root/<name>/`` (or torchvision's layout).

    With no ``base_url``, ``use_torchvision`` and torchvision importable, and the files
    not already present in ``root/<name>/``, torchvision's dataset class downloads them
    into ``root/MNIST/raw/`` or ``root/FashionMNIST/raw/`` and they are verified here
    like the urllib downloads. If torchvision fails to download, urllib takes over.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        root: The data root.
        base_url: A mirror (http(s)://, file:// or a local directory) replacing the defaults.
        checksums: MD5 by file name, or by ``<name>/<file name>`` (which wins); None
            uses ``KNOWN_MD5``.
        verify: False skips the MD5 check (the file must still read as IDX).
        timeout: Seconds before a stalled connection fails.
        log: Called with one line per file (downloaded or skipped); None is silent.
        use_torchvision: False never tries torchvision, even when it imports.

    Returns:
        The paths of the four files (under ``root/<name>/``, or torchvision's
        ``raw/`` folder when it downloaded them).

    Raises:
        ConfigError: Unknown name, or no checksum for a file.
        DataError: A file could not be fetched from any mirror; the message names
            the file, each URL tried and why it failed. Or a file torchvision wrote
            failed the check; the message names the file and why.
    """
    if name not in MIRRORS:
        raise unknown_name("dataset", name, downloadable_names())
    expected = _expected_md5(name, KNOWN_MD5[name] if checksums is None else checksums) if verify else {}
    root = Path(root).expanduser()
    target = root / name
    say = log or (lambda line: None)
    already_here = all(_is_present(target / file_name, expected.get(file_name)) for file_name in DATASET_FILES)
    if use_torchvision and not base_url and not already_here:
        datasets_module = _import_torchvision_datasets()
        if datasets_module is not None:
            try:
                _torchvision_download(datasets_module, name, root, say)
            except Exception as exc:  # noqa: BLE001 (any torchvision failure falls back to urllib)
                reason = " ".join(f"{type(exc).__name__}: {exc}".splitlines())
                say(f"torchvision download of {name} failed ({reason}); falling back to urllib")
            else:
                return _verify_torchvision_files(name, root, expected, say)
    target.mkdir(parents=True, exist_ok=True)
    mirrors = (_as_url(base_url),) if base_url else MIRRORS[name]
    paths: list[Path] = []
    for file_name in DATASET_FILES:
        dest = target / file_name
        md5 = expected.get(file_name)
        if _is_present(dest, md5):
            say(f"{dest}: present, skipped")
        else:
            _fetch(file_name, mirrors, dest, md5, timeout, say)
        paths.append(dest)
    return paths


def read_checksums(path: str | Path) -> dict[str, str]:
    """Read an ``md5sum``-style file: ``<md5>  <file name>`` per line, ``#`` comments allowed.

    Raises:
        ConfigError: The file is unreadable or a line is malformed.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read checksum file {path}: {exc}") from None
    table: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(maxsplit=1)
        digest = fields[0].lower()
        if len(fields) != 2 or len(digest) != 32 or any(ch not in "0123456789abcdef" for ch in digest):
            raise ConfigError(f"checksum file {path}, line {number}: expected '<md5> <file name>', got {line!r}")
        table[fields[1].strip().lstrip("*")] = digest
    return table


def file_md5(path: str | Path) -> str:
    """Return the hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _import_torchvision_datasets() -> object | None:
    """Return ``torchvision.datasets``, or None if torchvision does not import (for any reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchvision.datasets as datasets_module
    except Exception:  # noqa: BLE001 (a broken install, e.g. a CUDA build next to CPU torch)
        return None
    return datasets_module


def _torchvision_download(datasets_module: object, name: str, root: Path, say: Callable[[str], None]) -> None:
    """Download both splits with torchvision's dataset class into ``root/<Class>/raw/``."""
    class_name = TORCHVISION_CLASSES[name]
    dataset_class = getattr(datasets_module, class_name)
    say(f"downloading {name} with torchvision into {root / class_name / 'raw'}")
    for train in (True, False):
        dataset_class(root=str(root), train=train, download=True)


def _verify_torchvision_files(
    name: str, root: Path, expected: Mapping[str, str], say: Callable[[str], None]
) -> list[Path]:
    """Check the files torchvision wrote (MD5 of each ``.gz``, readable IDX); return their paths.

    torchvision keeps each ``.gz`` next to its decompressed copy; where only the
    decompressed copy exists it is returned, readable IDX but without an MD5 check.
    """
    raw = root / TORCHVISION_CLASSES[name] / "raw"
    paths: list[Path] = []
    for file_name in DATASET_FILES:
        path = raw / file_name
        md5 = expected.get(file_name)
        note = ""
        if not path.is_file():
            plain = raw / file_name.removesuffix(".gz")
            if not plain.is_file():
                raise DataError(f"torchvision download of {name}: {path} is missing (nor is {plain.name} there)")
            path, md5 = plain, None
            note = " (no .gz kept, md5 not checked)"
        if md5 is not None:
            actual = file_md5(path)
            if actual != md5:
                raise DataError(
                    f"torchvision download of {name}: {path}: checksum mismatch, expected md5 {md5}, got {actual}"
                )
        try:
            read_idx(path)
        except DataError as exc:
            raise DataError(f"torchvision download of {name}: {path}: not a valid IDX file ({exc})") from None
        say(f"{path}: ok{note}")
        paths.append(path)
    return paths


def _expected_md5(name: str, checksums: Mapping[str, str]) -> dict[str, str]:
    """Pick each file's MD5, preferring the ``<name>/<file>`` key."""
    expected: dict[str, str] = {}
    for file_name in DATASET_FILES:
        digest = checksums.get(f"{name}/{file_name}", checksums.get(file_name))
        if digest is None:
            raise ConfigError(f"no MD5 checksum given for {name}/{file_name}; pass one or disable verification")
        expected[file_name] = digest.lower()
    return expected


def _as_url(base_url: str) -> str:
    """Turn a local directory into a file:// URL; leave URLs alone."""
    if "://" not in base_url and Path(base_url).is_dir():
        return Path(base_url).resolve().as_uri()
    return base_url


def _is_present(dest: Path, md5: str | None) -> bool:
    """True if ``dest`` exists and passes the MD5 check (or, unverified, reads as IDX)."""
    if not dest.is_file():
        return False
    if md5 is not None:
        return file_md5(dest) == md5
    try:
        read_idx(dest)
    except DataError:
        return False
    return True


def _fetch(
    file_name: str,
    mirrors: tuple[str, ...],
    dest: Path,
    md5: str | None,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    """Try each mirror in turn; raise DataError listing every failure."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file_name
        say(f"downloading {url}")
        try:
            _download_to(url, dest, md5, timeout)
        except _FetchError as exc:
            failures.append(f"{url}: {exc}")
            continue
        say(f"{dest}: ok")
        return
    raise DataError(f"download of {file_name} failed: " + "; ".join(failures))


def _download_to(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    """Fetch one URL into ``dest`` through a checked ``.part`` file."""
    part = dest.with_name(dest.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        digest = hashlib.md5()
        received = 0
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if length is not None and length.isdigit() and received != int(length):
            raise _FetchError(f"incomplete download, received {received} of {length} bytes")
        if md5 is not None and digest.hexdigest() != md5:
            raise _FetchError(f"checksum mismatch, expected md5 {md5}, got {digest.hexdigest()}")
        try:
            read_idx(part)
        except DataError as exc:
            raise _FetchError(f"not a valid IDX file ({exc})") from None
        os.replace(part, dest)
    except urllib.error.HTTPError as exc:
        raise _FetchError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise _FetchError(getattr(reason, "strerror", None) or str(reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _FetchError(f"{type(exc).__name__}: {exc}") from None
    finally:
        part.unlink(missing_ok=True)
