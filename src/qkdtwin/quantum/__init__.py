"""Emulated BB84 links: analytic models, numpy emulator and two-party post-processing.

Public API (see docs/quantum.md):

- `LinkParams`, `validate_qkd_vars` (params)
- `keyrate` module: analytic models
- `AliceSource`, `BobDetector`, `ChannelFrame` (channel): the quantum layer, split per end
- `AlicePostProcessor`, `BobPostProcessor`, `LocalTransport`, `Transport` (postprocess)
- `CascadePlan`, `ParityOracle`, `CascadeBob` (cascade): reconciliation ask/answer
- `run_link_block`, `BlockOutcome` (link): both ends in one process
"""

from qkdtwin.quantum.cascade import CascadeBob, CascadePlan, ParityOracle
from qkdtwin.quantum.channel import AliceSource, BobDetector, ChannelFrame
from qkdtwin.quantum.link import BlockOutcome, run_link_block
from qkdtwin.quantum.params import LinkParams, validate_qkd_vars
from qkdtwin.quantum.postprocess import (
    AlicePostProcessor,
    BobPostProcessor,
    LocalTransport,
    PartyResult,
    Transport,
)

__all__ = [
    "AlicePostProcessor", "AliceSource", "BlockOutcome", "BobDetector", "BobPostProcessor",
    "CascadeBob", "CascadePlan", "ChannelFrame", "LinkParams", "LocalTransport",
    "ParityOracle", "PartyResult", "Transport", "run_link_block", "validate_qkd_vars",
]
