"""Executable docs: every Python command in README.md and docs/*.md passes ``--dry-run``.

A ``python -m flight_parsl.scale`` command runs in this process with ``--dry-run`` and must
expand to what its text says: one run, unless its last line carries ``# sweep: N runs``.
Other Python entry points (the Flower baseline, jobs/submit.py, download_data.py, analysis
and artifact scripts) run in a subprocess with ``--dry-run``. Shell commands that are not
Python (sudo, pip, sacct, sqlite3 ...) are not run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SWEEP = re.compile(r"#\s*sweep:\s*(\d+)\s+runs?\b")


@dataclass(frozen=True)
class Command:
    """One documented command: where it stands, its words, and the runs its text promises."""

    doc: str
    line: int
    argv: tuple[str, ...]
    runs: int  # 1 unless the command says "# sweep: N runs"

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.argv)}"


def _commands(path: Path) -> list[Command]:
    """The shell commands of a Markdown file's ```bash blocks, continuation lines joined."""
    out: list[Command] = []
    doc = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    in_block, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block = stripped in ("```bash", "```sh", "```shell") if not in_block else False
            pending = ""
            continue
        if not in_block or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text, pending = pending + stripped, ""
        sweep = SWEEP.search(text)
        words = shlex.split(text, comments=True)
        if words:
            out.append(Command(doc, start, tuple(words), int(sweep[1]) if sweep else 1))
    return out


ALL = [c for doc in DOCS for c in _commands(doc)]
PYTHON = [c for c in ALL if c.argv[0] in ("python", "python3")]
SCALE = [c for c in PYTHON if c.argv[1:3] == ("-m", "flight_parsl.scale")]
OTHER = [c for c in PYTHON if c not in SCALE and c.argv[1:3] != ("-m", "pytest")]  # the test command itself


def test_the_docs_have_commands() -> None:
    assert len(DOCS) >= 1 and len(SCALE) >= 10, [str(d) for d in DOCS]


def _scale(argv: list[str]) -> tuple[int, str, str]:
    from flight_parsl.cli.scale import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _resume_dir(cmd: Command, tmp_path: Path) -> list[str]:
    """A ``--resume DIR`` command's words, DIR made from the documented command that wrote it."""
    from flight_parsl.cli.scale import build_parser, configure
    from flight_parsl.config.experiment import save_yaml

    argv = list(cmd.argv[3:])
    run_dir = argv[argv.index("--resume") + 1]
    earlier = [c for c in SCALE if c.doc == cmd.doc and c.line < cmd.line and run_dir in c.argv]
    assert earlier, f"{cmd}: no earlier command in {cmd.doc} writes {run_dir} (--out {run_dir})"
    words = [tmp_path.as_posix() if w == run_dir else w for w in earlier[-1].argv[3:]]
    cfg, _ = configure(build_parser().parse_intermixed_args(words))
    save_yaml(cfg, tmp_path / "config.yaml")
    return [tmp_path.as_posix() if w == run_dir else w for w in argv]


@pytest.mark.parametrize("cmd", SCALE, ids=str)
def test_documented_scale_command_is_what_its_text_says(cmd: Command, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    argv = _resume_dir(cmd, tmp_path) if "--resume" in cmd.argv else list(cmd.argv[3:])
    code, out, err = _scale([*argv, "--dry-run"])
    assert code == 0, f"{cmd}\n{err}"
    last = out.strip().splitlines()[-1]
    expected = "dry run: 1 run" if cmd.runs == 1 else f"dry run: sweep of {cmd.runs} runs"
    assert last == expected, f"{cmd}: the text says {expected!r}, the command expands to {last!r}"


@pytest.mark.parametrize("cmd", OTHER, ids=str)
def test_documented_python_command_passes_its_dry_run(cmd: Command) -> None:
    argv = [sys.executable, *cmd.argv[1:]]
    if "--dry-run" not in argv:
        argv.append("--dry-run")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_the_reader_finds_sweeps_and_joins_lines(tmp_path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```bash\n# a comment\npython -m flight_parsl.scale --workers 2,8 \\\n"
        "    --rounds 1   # sweep: 2 runs\nsudo true\n```\n```python\nprint(1)\n```\n"
    )
    found = _commands(doc)
    assert [(c.argv, c.runs) for c in found] == [
        (("python", "-m", "flight_parsl.scale", "--workers", "2,8", "--rounds", "1"), 2),
        (("sudo", "true"), 1),
    ]
