"""Named experiments: ``--preset NAME`` reads ``configs/experiments/NAME.yaml``.

A preset is an experiment YAML with the same keys as ``--config``; it sits below
``--config``, the flags and ``key=value`` overrides, so any of its keys can be changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flight_parsl.config.experiment import load_yaml
from flight_parsl.core.errors import unknown_name

PRESET_DIR: Path = Path(__file__).resolve().parents[2] / "configs" / "experiments"


def preset_names() -> list[str]:
    """The names ``--preset`` accepts, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The nested config values of preset ``name``.

    Raises:
        ConfigError: No such preset (the message lists them).
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("preset", name, preset_names())
    return load_yaml(path)
