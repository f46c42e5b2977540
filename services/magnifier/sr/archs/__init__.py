"""Torch SR architectures whose state_dict keys match basicsr / the official repositories."""

from .compact import SRVGGNetCompact
from .rrdbnet import RRDBNet
from .smfanet import SMFANet
from .span import SPAN

__all__ = ["SPAN", "RRDBNet", "SMFANet", "SRVGGNetCompact"]
