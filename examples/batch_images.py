"""Generate a batch of images on a running Downcity cluster, fanned out as Ray tasks.

Run it on a machine of the cluster (the JobManager actor must exist, i.e. the app is deployed):

    python -m examples.batch_images --city demo --user demo-user "a red fox" "a lighthouse at dusk"

Each prompt becomes an image job owned by the user and billed once when it succeeds. Rerunning with the
same `--batch-id` returns that batch's jobs instead of generating (and billing) them again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import ray
from rich.console import Console
from rich.table import Table

from actors.batch import DEFAULT_TIMEOUT_S, BatchItem, generate_images
from actors.serving import RAY_NAMESPACE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate images for many prompts through Ray tasks.")
    parser.add_argument("prompts", nargs="+", help="one image job per prompt")
    parser.add_argument("--city", required=True, help="the city the jobs belong to")
    parser.add_argument("--user", required=True, help="the user who owns (and pays for) the jobs")
    parser.add_argument("--model", default=None, help="image model id; default: the 'image' default model")
    parser.add_argument("--batch-id", default=None, help="reuse to get the same batch's jobs back")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait per job")
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    return parser


def _table(items: list[BatchItem]) -> Table:
    table = Table("#", "status", "job", "images / error")
    for item in items:
        images = len((item.result or {}).get("parts", []))
        table.add_row(str(item.index), item.status, item.job_id or "-", str(images) if item.ok else item.error or "")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch and print one row per prompt; exit status 1 when any prompt failed."""
    args = _parser().parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address, namespace=RAY_NAMESPACE, log_to_driver=False)
    items = generate_images(
        args.prompts,
        city_id=args.city,
        user_id=args.user,
        model=args.model,
        batch_id=args.batch_id,
        timeout_s=args.timeout,
    )
    console = Console()
    console.print(_table(items))
    succeeded = sum(item.ok for item in items)
    console.print(f"{succeeded} of {len(items)} images generated")
    return 0 if succeeded == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())
