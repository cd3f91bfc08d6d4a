"""Where Ray runs: a cluster at ``--address`` (checked before Ray starts) or a local instance on loopback.
The search (Ray Tune) and data-parallel training (Ray Train) start Ray the same way."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from spaces.errors import UserError


def check_address(address: str | None) -> str | None:
    """Resolve --address (or RAY_ADDRESS) and check that something listens there, before Ray starts."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")
        if not current.exists():
            raise UserError("--address auto: no running Ray cluster found on this machine; start one with "
                            "`ray start --head` or leave out --address for a local instance")
        address = current.read_text().strip()
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError):
        raise UserError(f"--address {address}: no Ray cluster answers there; check the address "
                        "(host:port of the head node, e.g. 127.0.0.1:6379) or leave out --address") from None
    return address


def start_ray(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Connect to the cluster at ``address`` or start a local instance; False when Ray was already up
    (the caller then leaves it running)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        # A local instance stays on loopback (address="local": never attach to some other cluster running here).
        ray.init(address="local", include_dashboard=False, log_to_driver=log_to_driver, _node_ip_address="127.0.0.1")
    return True
