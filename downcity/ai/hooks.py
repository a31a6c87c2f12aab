"""Hooks: code the Federation runs around every AI call.

Hooks live at three levels — the Federation, an AIService and a model — and run as an onion:

- ``before``: federation → service → model. A before hook may rewrite ``ctx.input``, put scratch values in
  ``ctx.locals``, or deny the call by raising a ``DowncityHTTPError`` (e.g. 402 or 429); the first raise
  stops the chain and the action never runs.
- ``after``: model → service → federation. After hooks see ``ctx.output``, ``ctx.metering.usage`` and
  ``ctx.duration_ms``.
- ``on_error``: model → service → federation. They see ``ctx.error`` and cannot swallow it: every on_error
  hook runs even when an earlier one fails, and the caller re-raises the original error afterwards.

Within one level, hooks run in registration order. A hook is a sync or async callable taking the context.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from downcity.ai.context import Context

logger = logging.getLogger(__name__)

HookFn = Callable[["Context"], Awaitable[None] | None]
H = TypeVar("H", bound=HookFn)


@dataclass
class Hooks:
    """The before, after and on_error hooks of one level."""

    before: list[HookFn] = field(default_factory=list)
    after: list[HookFn] = field(default_factory=list)
    on_error: list[HookFn] = field(default_factory=list)


class HookHost:
    """Decorators that register hooks on an object holding a `hooks: Hooks` attribute."""

    hooks: Hooks

    def before(self, fn: H) -> H:
        """Register a before hook; usable as a decorator."""
        self.hooks.before.append(fn)
        return fn

    def after(self, fn: H) -> H:
        """Register an after hook; usable as a decorator."""
        self.hooks.after.append(fn)
        return fn

    def on_error(self, fn: H) -> H:
        """Register an on_error hook; usable as a decorator."""
        self.hooks.on_error.append(fn)
        return fn


async def _call(fn: HookFn, ctx: Context) -> None:
    result = fn(ctx)
    if inspect.isawaitable(result):
        await result


async def run_before(ctx: Context, chain: Sequence[Hooks]) -> None:
    """Run before hooks outermost level first; a raise denies the call."""
    for hooks in chain:
        for fn in hooks.before:
            await _call(fn, ctx)


async def run_after(ctx: Context, chain: Sequence[Hooks]) -> None:
    """Run after hooks innermost level first."""
    for hooks in reversed(chain):
        for fn in hooks.after:
            await _call(fn, ctx)


async def run_on_error(ctx: Context, chain: Sequence[Hooks]) -> None:
    """Run every on_error hook innermost level first; a failing hook is logged and never masks `ctx.error`."""
    for hooks in reversed(chain):
        for fn in hooks.on_error:
            try:
                await _call(fn, ctx)
            except Exception:
                logger.exception("on_error hook %s failed", getattr(fn, "__qualname__", fn))
