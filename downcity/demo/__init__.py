"""The DEMO upstream: a fake, deterministic OpenAI-compatible provider for demos, tests and benchmarks."""

from downcity.demo.app import build_demo_app
from downcity.demo.upstream import DemoUpstream

__all__ = ["DemoUpstream", "build_demo_app"]
