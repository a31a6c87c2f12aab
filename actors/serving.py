"""Ray names and the environment for Ray Serve's throughput-optimized HAProxy mode, set before Ray starts.

Serve reads these at import time in every Ray process, so they go into the environment of the process that
starts the cluster. Each port Serve binds besides the HTTP port is derived from one `port_base`, so two
local clusters (a test session and a `downcity up`, say) never fight over Serve's fixed defaults.
"""

from __future__ import annotations

import os
import socket

DEFAULT_PORT_BASE = 18400
# The Ray namespace of every named Downcity actor (the Ledger shards, the JobManager).
RAY_NAMESPACE = "downcity"


def throughput_mode_env(port_base: int = DEFAULT_PORT_BASE) -> dict[str, str]:
    """The variables that turn on HAProxy + throughput-optimized Serve with ports from `port_base`."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(port_base),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(port_base + 1),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(port_base + 2),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port_base + 10),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port_base + 299),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(port_base + 300),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(port_base + 599),
        # Serve kills a proxy not ready within this (5 s by default), and `serve.start` then fails instead of
        # waiting for its restart; starting HAProxy on a busy two-core node has taken longer than that.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    }


def apply_throughput_mode(port_base: int = DEFAULT_PORT_BASE) -> None:
    """Put the throughput-mode variables into this process's environment (before `ray.init`)."""
    os.environ.update(throughput_mode_env(port_base))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
