"""Run a notebook headless with nbclient, after injecting parameters.

    python analysis/run_notebook.py analysis/scaling.ipynb \
        --param results=results/scaling.csv --param out=figs/scaling.png

The cell tagged ``parameters`` is rewritten: every name it assigns keeps its assignment, with the
value of a ``--param NAME=VALUE`` given for it (always a string). A name the cell does not assign
is an error. The kernel runs in the current directory, so relative paths mean what they mean on
this command line; the kernel also gets FLIGHT_PARSL_ROOT (this repository) so the notebook
finds ``analysis`` from a directory outside the repository. The executed notebook goes to ``--output``, or else next to the ``out``
parameter as ``<out stem>.executed.ipynb`` (next to the notebook when there is no ``out``).

Exit status: 0 on success; 1 when a cell fails (the partly executed notebook is still written,
and one line names the cell and the error); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any

import nbformat

PARAMETERS_TAG = "parameters"
ROOT_ENV = "FLIGHT_PARSL_ROOT"


class ParameterError(ValueError):
    """Bad --param or a notebook without a usable parameters cell."""


class NotebookFailed(RuntimeError):
    """A cell raised; ``written`` is where the partly executed notebook went."""

    def __init__(self, message: str, written: Path) -> None:
        super().__init__(message)
        self.written = written


def parameters_cell(nb: Any) -> Any:
    """The code cell tagged ``parameters``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ParameterError(f"the notebook has no code cell tagged {PARAMETERS_TAG!r}")


def parameter_defaults(source: str) -> dict[str, str]:
    """NAME -> source text of the value, for each ``NAME = value`` in a parameters cell."""
    tree = ast.parse(source)
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name) and node.value is not None:
                found[targets[0].id] = ast.get_source_segment(source, node.value) or ""
    return found


def inject_parameters(nb: Any, params: dict[str, str]) -> dict[str, Any]:
    """Rewrite the parameters cell with ``params`` applied; return the effective values."""
    cell = parameters_cell(nb)
    defaults = parameter_defaults(cell.source)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ParameterError(
            f"unknown parameter {unknown[0]!r}; the notebook's parameters are: {', '.join(defaults) or 'none'}"
        )
    lines = ["# Parameters injected by analysis/run_notebook.py"]
    effective: dict[str, Any] = {}
    for name, value_src in defaults.items():
        if name in params:
            lines.append(f"{name} = {params[name]!r}")
            effective[name] = params[name]
        else:
            lines.append(f"{name} = {value_src}")
            try:
                effective[name] = ast.literal_eval(value_src)
            except (ValueError, SyntaxError):
                effective[name] = None
    cell.source = "\n".join(lines) + "\n"
    return effective


def parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ParameterError(f"--param wants NAME=VALUE, got {item!r}")
        params[name.strip()] = value
    return params


def default_output(notebook: Path, effective: dict[str, Any]) -> Path:
    out = effective.get("out")
    if isinstance(out, str) and out:
        p = Path(out)
        return p.parent / f"{p.stem}.executed.ipynb"
    return notebook.with_name(f"{notebook.stem}.executed.ipynb")


def _quiet_arguments(kernel: str) -> list[str]:
    """``--log-level=ERROR`` for an ipykernel kernel: no start-up warnings on stderr."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(kernel).argv
    except (NoSuchKernel, OSError, ValueError):
        return []
    return ["--log-level=ERROR"] if any("ipykernel" in a for a in argv) else []


def run_notebook(
    notebook: str | Path,
    params: dict[str, str] | None = None,
    output: str | Path | None = None,
    timeout: int = 300,
    kernel_name: str | None = None,
    cwd: str | Path | None = None,
) -> Path:
    """Inject ``params``, execute the notebook in ``cwd`` (default: the current directory), write it.

    Returns the path of the executed notebook. Raises ParameterError for bad parameters and
    NotebookFailed (after writing the partly executed notebook) when a cell fails.
    """
    from nbclient import NotebookClient

    src = Path(notebook)
    if not src.is_file():
        raise ParameterError(f"notebook not found: {src}")
    nb = nbformat.read(src, as_version=4)
    effective = inject_parameters(nb, params or {})
    dest = Path(output) if output else default_output(src, effective)
    if dest.resolve() == src.resolve():
        raise ParameterError(f"refusing to overwrite the notebook itself: {dest}")
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        extra_arguments=_quiet_arguments(kernel),
        resources={"metadata": {"path": str(Path(cwd) if cwd else Path.cwd())}},
    )
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellExecutionError

    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        env.setdefault(ROOT_ENV, str(repo))  # where the notebook looks when the cwd is outside the repo
    try:
        client.execute(env=env)
    except NoSuchKernel as exc:
        raise NotebookFailed(f"kernel start: no Jupyter kernel named {exc.name!r} (pip install ipykernel)", dest) from exc
    except CellExecutionError as exc:
        failed = next(
            (i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
            None,
        )
        where = f"cell {failed}" if failed is not None else "a cell"
        raise NotebookFailed(f"{where}: {exc.ename}: {exc.evalue}".splitlines()[0], dest) from exc
    finally:
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:
            self.exit(2, f"{self.prog}: error: {message}\n")

    p = Parser(prog="run_notebook.py", description="Inject parameters into a notebook and run it headless.")
    p.add_argument("notebook")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    p.add_argument("--output", help="where to write the executed notebook")
    p.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    p.add_argument("--kernel", help="kernel name (default: the notebook's, else python3)")
    p.add_argument("--dry-run", action="store_true", help="check the notebook and the parameters, print the "
                   "effective parameters and where the executed notebook would go, and exit (runs nothing)")
    args = p.parse_args(argv)
    try:
        params = parse_params(args.param)
        if args.dry_run:
            path = Path(args.notebook)
            if not path.is_file():
                raise ParameterError(f"notebook not found: {path}")
            effective = inject_parameters(nbformat.read(path, as_version=4), params)
            print("parameters: " + ", ".join(f"{k}={v}" for k, v in effective.items()))
            print(f"would run {path} and write {Path(args.output) if args.output else default_output(path, effective)}")
            print("dry run: nothing run")
            return 0
        dest = run_notebook(args.notebook, params, output=args.output, timeout=args.timeout, kernel_name=args.kernel)
    except ParameterError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(f"{p.prog}: notebook failed in {exc} (executed notebook: {exc.written})", file=sys.stderr)
        return 1
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
