"""The debug workload both frameworks run: a reference model's weights as numpy arrays.

The model is ``flight_parsl.models.build_model(reference_spec(name))`` under
``torch.manual_seed(0)``, so its weights are the ones flight_parsl's
``--train none`` runs broadcast. Flower moves a list of numpy arrays, one per
state_dict entry in state_dict order: float entries as float32, integer buffers
(BatchNorm's ``num_batches_tracked``) as their own int64 arrays.

Imports numpy only; torch is imported when a model is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def model_arrays(name: str) -> list[np.ndarray]:
    """Return the reference model ``name``'s state_dict as C-contiguous numpy arrays (copies).

    Raises:
        ConfigError: ``name`` is not a registered model.
    """
    import torch

    from flight_parsl.models import build_model, reference_spec

    spec = reference_spec(name)
    torch.manual_seed(0)
    model = build_model(spec)
    arrays = []
    for tensor in model.state_dict().values():
        data = tensor.detach().cpu().numpy()
        dtype = np.float32 if data.dtype.kind == "f" else data.dtype
        arrays.append(np.array(data, dtype=dtype, order="C", copy=True))
    return arrays


def describe(arrays: list[np.ndarray]) -> dict[str, Any]:
    """Sizes of a model's arrays: count, elements, raw bytes, dtypes."""
    return {
        "num_arrays": len(arrays),
        "num_elements": int(sum(a.size for a in arrays)),
        "model_bytes": int(sum(a.nbytes for a in arrays)),
        "dtypes": sorted({str(a.dtype) for a in arrays}),
    }
