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
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3) as connection:
            speaks_http = _answers_http(connection)
    except (OSError, ValueError):
        raise UserError(f"--address {address}: no Ray cluster answers there; check the address "
                        "(host:port of the head node, e.g. 127.0.0.1:6379) or leave out --address") from None
    if speaks_http:  # Ray would wait for it forever
        raise UserError(f"--address {address} answers HTTP (the Ray dashboard's or a job server's port, e.g. 8265), "
                        "not the cluster's GCS; give the head node's GCS address (host:6379) or ray://host:10001")
    return address


def _answers_http(connection: socket.socket) -> bool:
    """Whether the server behind ``connection`` answers an HTTP/1.0 request as an HTTP server (Ray's GCS and
    client servers speak gRPC over HTTP/2, which answers it with a binary frame or not at all)."""
    try:
        connection.settimeout(2)
        connection.sendall(b"GET / HTTP/1.0\r\nHost: ray\r\n\r\n")
        return connection.recv(5) == b"HTTP/"
    except OSError:
        return False


def check_cluster_gpus(gpus: float, address: str) -> None:
    """After connecting to a cluster: refuse trials asking ``gpus`` GPUs each where no node has them now and
    the autoscaler's node types can never add them (Tune would wait forever)."""
    import ray
    from ray._private import state  # the cluster config's limits, as Ray Train reads them

    if gpus <= 0 or ray.cluster_resources().get("GPU", 0) >= gpus:
        return
    most = state.state.get_max_resources_from_cluster_config()
    if most is not None and most.get("GPU", 0) >= gpus:
        return  # the autoscaler adds GPU nodes on demand
    can = "its autoscaler's node types offer at most {:g}".format(most.get("GPU", 0)) if most is not None else \
        "it has no autoscaler to add GPU nodes"
    raise UserError(f"--gpus-per-trial {gpus:g}: the cluster at {address} has {ray.cluster_resources().get('GPU', 0):g} "
                    f"GPU(s) now and {can}; add GPU nodes or leave out --gpus-per-trial")


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
