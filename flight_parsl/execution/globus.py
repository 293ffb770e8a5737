"""Globus Compute sites: a site YAML with ``provider: {kind: globus_compute}``.

This module owns that site kind's schema (:class:`GlobusSiteSchema`, checked by
:func:`flight_parsl.config.schema.check`, errors in the one format) and turns it into Parsl's
``GlobusComputeExecutor`` (tasks go to a Globus Compute endpoint that someone
runs elsewhere, identified by its endpoint id). The executor needs the optional
``globus-compute-sdk`` package (``pip install "flight_parsl[globus]"``); without
it, or without a valid endpoint id, building the site fails with one ConfigError.

    label: remote
    slots: 8                    # tasks the run keeps in flight there (warm-up, planning)
    provider:
      kind: globus_compute
      endpoint_id: 2e2f1a8c-...  # the endpoint's UUID
      user_endpoint_config: {}   # optional: values for a multi-user endpoint's template
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from flight_parsl.config.schema import Schema, check
from flight_parsl.core.errors import ConfigError

KIND = "globus_compute"


def _endpoint_uuid(v: str) -> str:
    """A Globus Compute endpoint id: a UUID."""
    if not v:
        raise ValueError("must be the UUID of a Globus Compute endpoint (globus-compute-endpoint list)")
    try:
        uuid.UUID(v)
    except ValueError:
        raise ValueError("is not a UUID (a Globus Compute endpoint id)") from None
    return v


class GlobusProviderSchema(Schema):
    """``provider`` of a Globus Compute site."""

    model_config = ConfigDict(strict=True)

    kind: Literal["globus_compute"]
    endpoint_id: Annotated[str, AfterValidator(_endpoint_uuid)]
    user_endpoint_config: dict[Any, Any] | None = None


class GlobusSiteSchema(Schema):
    """A Globus Compute site file."""

    model_config = ConfigDict(strict=True)

    label: Annotated[str, Field(min_length=1)] = KIND
    slots: Annotated[int, Field(ge=1)] = 1
    start_timeout: Annotated[float, Field(gt=0)] = 600.0
    provider: GlobusProviderSchema


def is_globus(data: Any) -> bool:
    """True when a raw site mapping asks for a Globus Compute endpoint."""
    return isinstance(data, Mapping) and isinstance(data.get("provider"), Mapping) and (
        data["provider"].get("kind") == KIND
    )


def normalize(data: Mapping[str, Any], source: str = "site") -> dict[str, Any]:
    """Validate a Globus Compute site against :class:`GlobusSiteSchema`; return it with defaults filled.

    Raises:
        ConfigError: an unknown key, a missing or malformed endpoint id, a bad value.
    """
    site = check(GlobusSiteSchema, data, source)
    return {
        "label": site.label,
        "slots": site.slots,
        "start_timeout": site.start_timeout,
        "virtual_host": None,
        "provider": {"kind": KIND, "endpoint_id": site.provider.endpoint_id,
                     "user_endpoint_config": site.provider.user_endpoint_config},
    }


def build_executor(site: Mapping[str, Any], client: Any = None) -> Any:
    """A ``parsl.executors.GlobusComputeExecutor`` for a normalised Globus Compute site.

    Args:
        site: the site.
        client: a ``globus_compute_sdk.Client`` to use; None makes one, which needs a
            Globus login (stored tokens, or GLOBUS_COMPUTE_CLIENT_ID / _SECRET).

    Raises:
        ConfigError: the globus-compute-sdk package is not installed, this Parsl has
            no GlobusComputeExecutor, or the SDK could not make its client (no login).
    """
    label = site["label"]
    try:
        from globus_compute_sdk import Executor as ComputeExecutor
    except ImportError:
        raise ConfigError(
            f"site {label!r}: provider {KIND!r} needs the optional globus-compute-sdk package; "
            'install it with pip install "flight_parsl[globus]" (or pip install globus-compute-sdk)'
        ) from None
    try:
        from parsl.executors import GlobusComputeExecutor
    except ImportError:
        raise ConfigError(
            f"site {label!r}: provider {KIND!r} needs a Parsl with parsl.executors.GlobusComputeExecutor"
        ) from None
    prov = site["provider"]
    kwargs: dict[str, Any] = {"endpoint_id": prov["endpoint_id"], "client": client}
    if prov["user_endpoint_config"] is not None:
        kwargs["user_endpoint_config"] = dict(prov["user_endpoint_config"])
    try:
        compute = ComputeExecutor(**kwargs)
    except (Exception, EOFError) as exc:  # the SDK's login and client errors vary by version
        raise ConfigError(
            f"site {label!r}: could not open Globus Compute for endpoint {prov['endpoint_id']} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); log in once with "
            "'globus-compute-endpoint login', or set GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET"
        ) from exc
    return GlobusComputeExecutor(executor=compute, label=label)


def describe(site: Mapping[str, Any]) -> str:
    """One log line for a Globus Compute site."""
    return f"site {site['label']!r}: provider={KIND} endpoint={site['provider']['endpoint_id']} slots={site['slots']}"
