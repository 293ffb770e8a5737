"""Model transfer channels (see :mod:`flight_parsl.transfer.base`)."""

from __future__ import annotations

from flight_parsl.errors import unknown_name
from flight_parsl.transfer.base import Ref, Transfer
from flight_parsl.transfer.inline import InlineRef, InlineTransfer

TRANSFER_KINDS = ("parsl",)


def make_transfer(kind: str) -> Transfer:
    """Build the coordinator's side of a transfer channel by kind."""
    if kind == "parsl":
        return InlineTransfer()
    raise unknown_name("transfer", kind, TRANSFER_KINDS)


__all__ = ["InlineRef", "InlineTransfer", "Ref", "Transfer", "TRANSFER_KINDS", "make_transfer"]
