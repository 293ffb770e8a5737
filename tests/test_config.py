"""Experiment config: precedence, YAML files, overrides and the errors they give."""

import pytest

from flight_parsl.config.experiment import build_config, parse_override
from flight_parsl.core.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = build_config()
    assert (cfg.workers, cfg.rounds, cfg.backend, cfg.train.mode) == (4, 3, "parsl", "local")
    assert cfg.data.dataset == "digits"


def test_precedence_file_then_values_then_overrides(tmp_path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text("workers: 8\nrounds: 5\ntrain:\n  lr: 0.2\n  epochs: 3\n")
    cfg = build_config(f, [{"rounds": 6, "train": {"epochs": 4}}], ["train.epochs=7", "model.name=logreg"])
    assert cfg.workers == 8
    assert cfg.rounds == 6
    assert cfg.train.lr == 0.2
    assert cfg.train.epochs == 7
    assert cfg.model.name == "logreg"


def test_override_values_are_read_as_yaml() -> None:
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("x=null") == {"x": None}
    assert parse_override("x=fedavg") == {"x": "fedavg"}
    cfg = build_config(overrides=["train.lr=1e-2", "round.deadline_s=null", "data.root=/tmp/data"])
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.round.deadline_s is None and cfg.data.root == "/tmp/data"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=0.1", "config: unknown key 'train.lrr'; allowed keys in train: mode, epochs"),
        ("wrkers=3", "config: unknown key 'wrkers'; allowed keys: workers, rounds"),
        ("workers=three", "config: key 'workers' = 'three': must be an integer"),
        ("train.lr=-1", "config: key 'train.lr' = -1: must be > 0"),
        ("train=3", "config: key 'train' = 3: must be a mapping"),
        ("model.name=resnet19", "config: key 'model.name' = 'resnet19': unknown model; valid names:"),
        ("data.dataset=cifar", "config: key 'data.dataset' = 'cifar': unknown dataset; valid names: digits, fashion_mnist, mnist"),
        ("strategy.name=fedmagic", "config: key 'strategy.name' = 'fedmagic': unknown strategy; valid names: avgpush, fedasync, fedavg, fedbuff, fedmedian, fedprox, fedsgd, fml, joint, proxyfl, regular"),
        ("partition.kind=random", "config: key 'partition.kind' = 'random': unknown partition"),
        ("backend=slurm", "config: key 'backend' = 'slurm': must be one of 'parsl', 'thread' or 'process'"),
        ("train.mode=fast", "config: key 'train.mode' = 'fast': must be one of 'local' or 'none'"),
        ("nokey", "key.sub=value"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(overrides=[override])
    assert needle in str(err.value)


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigError, match="allowed keys in train: mode, epochs"):
        build_config(overrides=["train.epoch=2"])


def test_missing_and_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(bad)
