"""An aggregator task holds one child model at a time, whatever its number of children.

The task runs in a fresh Python process (as on a slot) on ResNet-50-sized children
(25.5M float32 parameters, about 97 MiB each) that travel through a store; the
process measures its own peak RSS around the task (``VmHWM``, reset before it), so
nothing else on the machine enters the figure. WeightedMean sums up to 16 results in
one float32 block (its float64 sum, two models more, comes with the 17th) and one
child is resident while it is folded in: two models, plus the scaled add's scratch
(three with a float64 accumulator, before float32 blocks). Before, the task also kept the first child (the
aggregator's template), the store's cache kept the previous child while the next
one arrived, a scaled add used a model-sized float64 temporary, and the
accumulator outlived the result's serialization: eight models through ``file``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.fl.strategies import make_strategy
from flight_parsl.transfer import open_transfer
from redis_fixtures import managed_redis  # noqa: F401 (fixture)

PARAMS = 25_500_000  # ResNet-50
CHILDREN = 4
MODEL_MB = PARAMS * 4 / 2**20
SLACK_MB = 32  # the scaled add's scratch (8 MiB) and the interpreter's small objects

CHILD = """
import pickle, sys
from flight_parsl.core.memory import peak_rss_mb, reset_peak_rss, rss_mb
from flight_parsl.worker.tasks import aggregate_task

children, strategy = pickle.load(sys.stdin.buffer)
assert reset_peak_rss()
before = rss_mb()
res = aggregate_task(children, strategy, 0, "agg-1-0")
pickle.dump((peak_rss_mb() - before, res), sys.stdout.buffer)
"""


def _aggregate_in_a_fresh_process(transfer) -> tuple[float, object]:
    """Put CHILDREN children through ``transfer``; run aggregate_task on them in a new process."""
    layout = Layout.from_shapes([("w", (PARAMS,), "float32")])
    tiny = FlatWeights(np.zeros(1, np.float32), Layout.from_shapes([("w", (1,), "float32")]))
    ref = transfer.publish(tiny, 0)  # only its channel matters: the children are replies through it
    children = []
    for i in range(CHILDREN):  # values i + 1 with weights i + 2
        child, _, _ = ref.reply(FlatWeights(np.full(PARAMS, i + 1, np.float32), layout))
        transfer.adopt(child)
        children.append((child, float(i + 2)))
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=pickle.dumps((children, make_strategy("fedavg"))),
        capture_output=True, timeout=240, env={**os.environ},
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    growth_mb, res = pickle.loads(done.stdout)
    return growth_mb, res


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_an_aggregator_task_holds_one_child_at_a_time(kind, request) -> None:
    address = str(request.getfixturevalue("managed_redis").address) if kind == "redis" else None
    with open_transfer(kind, redis=address) as transfer:
        growth_mb, res = _aggregate_in_a_fresh_process(transfer)
        (out, total), = res.outputs
        transfer.adopt(out)
        mean = transfer.collect(out).buffer
        payload = out.nbytes
    assert total == sum(i + 2 for i in range(CHILDREN))
    expected = np.float32(sum((i + 1) * (i + 2) for i in range(CHILDREN)) / total)
    assert mean.shape == (PARAMS,) and np.all(mean == expected)
    assert res.bytes_in == CHILDREN * payload  # every child crossed: read past the cache, once each
    assert growth_mb < 2 * MODEL_MB + SLACK_MB, f"{growth_mb:.0f} MiB = {growth_mb / MODEL_MB:.2f} models"
