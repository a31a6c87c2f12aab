"""Where Downcity's Ray actors run: Ray resources requested per actor, from `serve_config.yaml`'s `args:`.

Placement is plain Ray custom resources. A node type in `cluster.yaml` advertises one (`provider: 1`), and
an actor that requests a share of it (`provider: 0.01`) can only run on such a node. Every Ray head node has
the built-in resource `node:__internal_head__`, so requesting a share of it pins an actor to the head: the
default of the Ledger and the JobManager, which also holds on a single machine with no custom resources.
"""

from __future__ import annotations

from typing import Any

HEAD_NODE_RESOURCE = "node:__internal_head__"
# A share small enough for every control actor (up to 64 ledger shards and the JobManager) to fit on the head.
HEAD_SHARE = 0.001
HEAD_PINNED: dict[str, float] = {HEAD_NODE_RESOURCE: HEAD_SHARE}


def check_resources(resources: dict[str, float], field: str) -> dict[str, float]:
    """The resources as given, or ValueError naming `field` for an empty name or a non-positive share."""
    for name, share in resources.items():
        if not name.strip():
            raise ValueError(f"{field}: resource names must not be empty")
        if name in ("CPU", "GPU"):
            raise ValueError(f"{field}: {name} is not a custom resource; Downcity's actors need no CPU or GPU")
        if share <= 0:
            raise ValueError(f"{field}: the share of {name!r} must be positive, got {share}")
    return resources


def actor_options(resources: dict[str, float]) -> dict[str, Any]:
    """`ray_actor_options` for a zero-CPU actor requesting `resources` (none: anywhere)."""
    options: dict[str, Any] = {"num_cpus": 0}
    if resources:
        options["resources"] = dict(resources)
    return options
