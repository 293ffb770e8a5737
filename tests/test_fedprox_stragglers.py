"""Stragglers (FedProx's systems heterogeneity), weight decay, presets and multirun grids."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flight_parsl.cli.grid import assignments, describe, expand, split_overrides
from flight_parsl.cli.presets import preset_names, preset_values
from flight_parsl.config.experiment import build_config
from flight_parsl.core.errors import ConfigError
from flight_parsl.core.types import LocalSettings
from flight_parsl.fl.strategies import make_strategy
from flight_parsl.fl.stragglers import Stragglers

BASE = LocalSettings(epochs=20, batch_size=10, lr=0.03)


def test_a_fraction_of_each_round_straggles_with_seeded_epochs() -> None:
    s = Stragglers(0.9, seed=4)
    sampled = list(range(0, 100, 10))
    picks = s.pick(3, sampled)
    assert len(picks) == 9 and set(picks) <= set(sampled) and picks == sorted(picks)
    assert s.pick(3, sampled) == picks and Stragglers(0.9, seed=4).pick(3, sampled) == picks
    assert any(Stragglers(0.9, seed=4).pick(r, sampled) != picks for r in range(4, 10))
    assert Stragglers(0.5).count(10) == 5 and Stragglers(0.0).count(10) == 0
    assert Stragglers(1.0, drop=True).count(10) == 9  # dropping keeps one client
    draws = [s.epochs(r, c, 20) for r in range(30) for c in range(20)]
    assert min(draws) == 1 and max(draws) == 20  # Uniform{1..E}
    assert abs(np.mean(draws) - 10.5) < 1.0
    assert s.epochs(2, 7, 20) == Stragglers(0.9, seed=4).epochs(2, 7, 20)  # any slot draws the same
    with pytest.raises(ValueError, match="stragglers must be in"):
        Stragglers(1.5)


def test_fedprox_keeps_stragglers_partial_work_and_fedavg_drops_them() -> None:
    rng = np.random.default_rng(0)
    keep = make_strategy("fedprox", mu=1.0, clients_per_round=10, stragglers=Stragglers(0.5, seed=1))
    sampled = keep.sample(0, 1000, rng)
    assert len(sampled) == 10 and keep.dropped(0) == []
    settings = [keep.configure(0, c, BASE) for c in sampled]
    slow = [s for s in settings if s.straggler]
    assert len(slow) == 5 and all(1 <= s.epochs <= 20 for s in slow)
    assert all(s.epochs == 20 and s.prox_mu == 1.0 for s in settings if not s.straggler)
    assert all(s.prox_mu == 1.0 for s in slow)
    assert keep.configure(1, sampled[0], BASE) == replace(BASE, prox_mu=1.0)  # another round: not sampled yet

    drop = make_strategy("fedavg", clients_per_round=10, stragglers=Stragglers(0.9, drop=True, seed=1))
    kept = drop.sample(0, 1000, np.random.default_rng(0))
    assert kept == [c for c in sampled if c not in drop.dropped(0)]  # the same draw, stragglers left out
    assert len(kept) == 1 and len(drop.dropped(0)) == 9
    assert drop.configure(0, kept[0], BASE) == BASE
    assert make_strategy("fedavg", clients_per_round=10).sample(0, 1000, np.random.default_rng(0)) == sampled


def test_weight_decay_is_sgds_l2_step() -> None:
    from flight_parsl.engine.context import prepare
    from flight_parsl.worker.training import train_local

    cfg = build_config(values=[{"backend": "thread", "workers": 4}], overrides=["model.name=logreg", "train.momentum=0"])
    exp = prepare(cfg)
    one = LocalSettings(epochs=1, batch_size=10, lr=0.1, max_steps=1, full_batch=True)
    plain = train_local(exp.initial, exp.workload, one, 0, 0)[0].buffer
    decayed = train_local(exp.initial, exp.workload, replace(one, weight_decay=0.5), 0, 0)[0].buffer
    w0 = exp.initial.buffer
    np.testing.assert_allclose(decayed, plain - 0.1 * 0.5 * w0, atol=1e-6)


def test_grid_rules_keep_comma_valued_keys_whole() -> None:
    assert expand("strategy.mu=0,2") == ("strategy.mu", ("0", "2"))
    assert expand("seed=0..4") == ("seed", ("0", "1", "2", "3", "4"))
    assert expand("strategy.stragglers=0, 0.5,0.9") == ("strategy.stragglers", ("0", "0.5", "0.9"))
    assert expand("data.dataset=synthetic,digits") == ("data.dataset", ("synthetic", "digits"))
    assert expand("faults.kill=1@2,3@4") is None  # a list key: one value, a two-item list
    assert expand("faults.kill=[1@2,3@4]") is None
    assert expand("faults.kill=[[1@2,3@4],[5@6]]") == ("faults.kill", ("[1@2, 3@4]", "[5@6]"))
    assert expand("train.eval_train=[true,false]") == ("train.eval_train", ("true", "false"))
    assert expand("strategy.mu=0.5") is None and expand("nokey=1,2") is None
    with pytest.raises(ConfigError, match="a range a..b needs an integer key, 'strategy.mu' is not one"):
        expand("strategy.mu=0..2")
    with pytest.raises(ConfigError, match="range 3..1 is empty"):
        expand("seed=3..1")
    with pytest.raises(ConfigError, match="has an empty item"):
        expand("strategy.mu=0,,1")
    plain, grid = split_overrides(["rounds=2", "strategy.mu=0,2", "faults.kill=1@2,3@4", "seed=0..1"])
    assert plain == ["rounds=2", "faults.kill=1@2,3@4"]
    combos = assignments(grid)
    assert [describe(c) for c in combos] == [
        "strategy.mu=0 seed=0", "strategy.mu=0 seed=1", "strategy.mu=2 seed=0", "strategy.mu=2 seed=1",
    ]
    with pytest.raises(ConfigError, match="swept twice"):
        split_overrides(["seed=0..1", "seed=2,3"])


def test_presets_hold_the_papers_values_and_can_be_overridden() -> None:
    assert {"fedprox-digits", "fedprox-mnist", "fedprox-mnist5k", "fedprox-synthetic"} <= set(preset_names())
    cfg = build_config(values=[preset_values("fedprox-mnist"), {"backend": "thread"}], overrides=["strategy.mu=2"])
    t, s = cfg.train, cfg.strategy
    assert (cfg.workers, cfg.rounds, s.clients_per_round, s.name, s.mu) == (1000, 100, 10, "fedprox", 2.0)
    assert (t.batch_size, t.lr, t.weight_decay, t.momentum, cfg.model.name) == (10, 0.03, 0.001, 0.0, "logreg")
    assert (cfg.partition.kind, cfg.partition.labels_per_client, cfg.data.dataset) == ("label_pairs", 2, "mnist")
    # local epochs: the seed's baseline document's default (5) for the MNIST-like presets, the paper's E = 20
    # on Synthetic; the Flower baseline's config (10) and the paper's MNIST E (20) are one override away
    epochs = {name: preset_values(name)["train"]["epochs"] for name in preset_names() if name.startswith("fedprox-")}
    assert epochs == {"fedprox-digits": 5, "fedprox-mnist": 5, "fedprox-mnist5k": 5, "fedprox-synthetic": 20}
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset_values("nope")
    with pytest.raises(ConfigError, match=r"config: key 'strategy.stragglers' = 1.5: must be <= 1"):
        build_config(values=[{"backend": "thread"}], overrides=["strategy.stragglers=1.5"])


def test_every_fedprox_preset_value_says_where_it_comes_from() -> None:
    """Each value line of a FedProx preset ends with its source: [seed], [baseline], [paper] or [ours]."""
    from flight_parsl.cli.presets import PRESET_DIR

    for path in sorted(PRESET_DIR.glob("fedprox-*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                value, _, comment = line.partition("#")
                assert re.search(r"\[(seed|baseline|paper|ours)\]", comment), f"{path.name}:{number}: {line!r} has no source"


def test_htex_grid_sweep_of_synthetic_stragglers_records_and_resumes(tmp_path, capsys) -> None:
    """One HTEX executor runs both cells of a grid; tasks.csv has the straggler columns; a rerun skips."""
    import json

    from conftest import read_csv
    from flight_parsl.cli.scale import main
    from flight_parsl.results.curves import collect_rounds
    from flight_parsl.results.table import read_rows

    results = tmp_path / "results.csv"
    args = [
        "--preset", "fedprox-synthetic", "--workers", "12", "--rounds", "2", "--out", str(tmp_path / "sweep"),
        "--results", str(results), "slots=2", "train.epochs=3", "strategy.clients_per_round=4",
        "strategy.stragglers=0.5", "strategy.drop_stragglers=true,false",
    ]
    assert main(args) == 0
    rows = read_rows(results)
    assert [r["cell"] for r in rows] == ["strategy.drop_stragglers=true", "strategy.drop_stragglers=false"]
    assert all(r["status"] == "ok" and r["num_workers"] == "12" and r["slots"] == "2" for r in rows)
    dropped, kept = (read_csv(Path(r["run_dir"]) / "tasks.csv") for r in rows)
    for r in range(2):
        mine = [t for t in dropped if t["round"] == str(r + 1)]
        assert sorted(t["status"] for t in mine) == ["dropped", "dropped", "ok", "ok"]
        assert all(t["straggler"] == "1" and t["epochs"] == "0" for t in mine if t["status"] == "dropped")
        assert all(t["straggler"] == "0" and t["epochs"] == "3" for t in mine if t["status"] == "ok")
        mine = [t for t in kept if t["round"] == str(r + 1)]
        assert len(mine) == 4 and all(t["status"] == "ok" for t in mine)
        slow = [int(t["epochs"]) for t in mine if t["straggler"] == "1"]
        assert len(slow) == 2 and all(1 <= e <= 3 for e in slow)
        assert all(t["epochs"] == "3" for t in mine if t["straggler"] == "0")
        assert len({t["pid"] for t in mine}) <= 2  # packed onto the two slots
    second = json.loads((Path(rows[1]["run_dir"]) / "summary.json").read_text())
    assert second["dfk_reused"] is True  # one executor for the whole grid
    curves = collect_rounds(results, keys=["strategy.drop_stragglers"])
    assert len(curves) == 4 and curves["global_train_loss"].notna().all()
    assert sorted(curves["strategy.drop_stragglers"].unique()) == [False, True]
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("already done") == 2
    assert len(read_rows(results)) == 2
