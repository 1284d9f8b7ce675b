"""Where a run starts a server or a calibration peer: loopback, or a network namespace of the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Placement:
    """Where the run starts a server or a calibration peer: the address it serves on, the command prefix
    that puts it there (`ip netns exec NS` for a namespace of this run), and the environment it needs."""

    host: str
    command_prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespaced(self) -> bool:
        """In a namespace of this run: only this host reaches it, as with loopback."""
        return bool(self.command_prefix)

    def server_args(self, transport_name: str) -> tuple[str, ...]:
        """What a server of `transport_name` needs to serve here: PyTorch RPC, which cannot authenticate,
        is let serve unauthenticated in the run's own namespace, as it does on loopback."""
        return ("--allow-unauthenticated-rpc",) if self.namespaced and transport_name == "rpc" else ()
