"""Types decide the override grammar; the command line takes ``key=value`` anywhere; one error format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flight_parsl.cli.grid import expand, is_list_key, split_overrides
from flight_parsl.cli.scale import build_parser, configure, is_sweep
from flight_parsl.config.experiment import ClientAt, RedisStop, build_config, config_hash
from flight_parsl.config.schema import json_schema
from flight_parsl.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SITES = "configs/parsl/netns/site-a.yaml,configs/parsl/netns/site-b.yaml"


def resolve(*argv: str):
    args = build_parser().parse_intermixed_args(list(argv))
    cfg, grid = configure(args)
    return args, cfg, grid


@pytest.mark.parametrize(
    "key", ["sites.files", "peer.private_models", "faults.kill", "faults.hang", "faults.kill_slots",
            "faults.redis_stop", "faults.slow"],
)
def test_list_keys_are_never_split_into_a_sweep(key) -> None:
    assert is_list_key(key)
    assert expand(f"{key}=a,b") is None and expand(f"{key}=[a,b]") is None
    assert expand(f"{key}=[[a,b],[c]]") == (key, ("[a, b]", "[c]"))
    with pytest.raises(ConfigError, match="sweep it with a list of lists"):
        expand(f"{key}=[[a,b],c]")


def test_scalar_keys_sweep() -> None:
    assert not is_list_key("strategy.mu") and not is_list_key("slots")
    assert expand("slots=2,per_client") == ("slots", ("2", "per_client"))
    assert expand("mode=[sync,async]") == ("mode", ("sync", "async"))


def test_the_readme_several_sites_command_is_one_two_site_run() -> None:
    args, cfg, grid = resolve("--workers", "8", "--topology", "configs/topologies/example_two_sites.yaml",
                              "--transfer", "redis", f"sites.files={SITES}")
    assert grid == () and not is_sweep(args, grid)
    assert cfg.sites.files == SITES.split(",")


def test_a_list_key_sweeps_with_a_list_of_lists(tmp_path) -> None:
    from flight_parsl.cli.scale import sweep_plan

    args, cfg, grid = resolve("--workers", "8", "--out", str(tmp_path), "--transfer", "redis",
                              "sites.files=[[configs/parsl/netns/site-a.yaml,configs/parsl/netns/site-b.yaml],"
                              "[configs/parsl/netns/site-a.yaml]]")
    spec, _, _ = sweep_plan(args, cfg, grid)
    assert spec.size == 2 and spec.grid[0][0] == "sites.files"


def test_overrides_stand_anywhere_and_inject_keeps_its_commas() -> None:
    args, cfg, grid = resolve("--mode", "decentralized", "--strategy", "proxyfl", "peer.private_models=mlp,logreg",
                              "--workers", "8", "--inject", "slow=1,5", "--model", "logreg", "rounds=2")
    assert grid == () and cfg.workers == 8 and cfg.rounds == 2
    assert cfg.peer.private_models == ["mlp", "logreg"] and cfg.faults.slow == [1, 5]


def test_faults_are_typed_once_and_written_back_as_given() -> None:
    cfg = build_config(overrides=["faults.kill=1@2, 3@4", "faults.hang=0@1", "faults.redis_stop=2",
                                  "transfer.kind=redis"])
    assert cfg.faults.kill == [ClientAt(1, 2), ClientAt(3, 4)] and cfg.faults.redis_stop == [RedisStop(2)]
    again = build_config(values=[cfg.to_dict()])  # config.yaml reads back to the same config
    assert again.faults == cfg.faults and config_hash(again) == config_hash(cfg)
    assert cfg.to_dict()["faults"]["kill"] == ["1@2", "3@4"]
    assert cfg.to_dict()["faults"]["redis_stop"] == [2]  # a round alone stays an int in config.yaml


def test_hashes_of_configs_written_before_the_schema_are_unchanged() -> None:
    # values computed with the config module as it was before list keys became lists
    cases = [
        ([], "thread", "72531f440930ec05"),
        ([f"sites.files={SITES}", "transfer.kind=redis"], "parsl", "981d5ab6d65a2c89"),
        (["peer.private_models=mlp,logreg"], "thread", "f2b44be162c1541c"),
        (["faults.kill=1@2,3@4", "faults.slow=1,2", "faults.kill_slots=0.25@2,2@30s", "slots=4"], "parsl",
         "d2bf9a556895d388"),
        (["slots=per_client", "strategy.mu=2"], "parsl", "0dc70f92319417fa"),
    ]
    for overrides, backend, expected in cases:
        assert config_hash(build_config(values=[{"backend": backend}], overrides=overrides)) == expected, overrides


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("round.checkpoint=maybe", "config: key 'round.checkpoint' = 'maybe': must be true or false"),
        ("faults.kill=3", "config: key 'faults.kill[0]' = 3: must be a mapping"),
        ("faults.kill=x@1", "config: key 'faults.kill[0]' = 'x@1': 'x@1' is not CLIENT@ROUND"),
        ("sites.aggregate_at=up", "config: key 'sites.aggregate_at' = 'up': must be one of 'node' or 'children'"),
        ("peer.batch_size=0", "config: key 'peer.batch_size' = 0: must be > 0"),
        ("slots=0", "config: key 'slots' = 0: must be > 0"),
    ],
)
def test_every_config_error_has_one_format(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(overrides=[override])
    assert str(err.value).startswith(message), str(err.value)


def test_a_config_error_exits_2_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "flight_parsl.scale", "--rounds", "2", "round.quorum=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: config: key 'round.quorum' = 2: must be <= 1"]


def test_the_config_has_a_json_schema_for_editors() -> None:
    from flight_parsl.config.experiment import ExperimentConfig

    schema = json_schema(ExperimentConfig)
    assert schema["additionalProperties"] is False and "round" in schema["properties"]


def test_dry_run_starts_nothing_and_prints_the_plan(capsys) -> None:
    from flight_parsl.cli.scale import main

    assert main(["--workers", "8", "--topology", "tree:3", "--dry-run", "--backend", "thread"]) == 0
    out = capsys.readouterr().out
    assert "topology tree:3: height 3" in out and out.strip().endswith("dry run: 1 run")
    assert main(["--workers", "2,8", "--model", "tiny", "--train", "none", "seed=0..1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\ncell ") + out.startswith("cell ") == 4 and out.strip().endswith("dry run: sweep of 4 runs")
