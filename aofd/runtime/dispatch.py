"""The dispatcher: the listeners' single entry point, from a verified event to a started run.

`Dispatcher.dispatch(message)` looks the trigger up in the *current* routing table, lets its
compiled routes (`aofd.specs.routes`) pick the binding, and calls `FlowStarter.start(binding,
message)` with the binding's compiled spec, reporting a `ports.RouteOutcome`:

- no binding matches: a logged outcome and, where the platform expects an answer, a polite
  reply ("No flow is bound to this channel") — never a random binding;
- the chosen binding cannot run on this host now (its Context or provider is not ready, its
  listener failed): `stalled`, with the reason; the event is answered, not run, and a lower
  binding is never tried instead (that could run a prod channel's event under another Context);
- otherwise `started`, with the binding, Context and run id.

It must not block: `FlowStarter.start` returns a run id at once (the engine runs the flow in
its own task), and replies go out in tasks the dispatcher owns and drains on `aclose()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import structlog

from aofd import errors
from aofd.runtime import ports, routing, tasks
from aofd.specs import bindings, routes

PUBLISH_WAIT_S = 120.0
"""How long an event of a listener being started waits for its routes (an apply takes far less)."""

log = structlog.get_logger()


class FlowStarter(Protocol):
    """The flow engine's entry point: start a run of `binding` for `message`.

    Must not block: it returns the run id at once and runs the flow in a task of its own.
    """

    def start(self, binding: bindings.BindingSpec, message: ports.EventMessage) -> str: ...


def _fields(message: ports.EventMessage) -> dict[str, str]:
    return {
        "platform": message.platform,
        "trigger": message.trigger,
        "delivery_id": message.delivery_id,
        "channel": message.channel_name or message.channel_id,
        "event_type": message.event_type,
    }


_ABOVE_DEBUG = frozenset(
    structlog.make_filtering_bound_logger(level)
    for level in (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
)
"""structlog's filtering wrapper classes (shared, one per level) whose `debug` is a no-op."""


def debug_enabled() -> bool:
    """False only when the configured structlog wrapper certainly drops `debug` events.

    Cheap enough for the per-event path (one dict of the current config, read each call, so a later
    `structlog.configure()` is honoured); any other wrapper class counts as enabled.
    """
    return structlog.get_config()["wrapper_class"] not in _ABOVE_DEBUG


class Dispatcher:
    """Routes normalized events through the current routing table and starts flows (`ports.Dispatch`).

    Shared by every listener of every table; owned by the daemon (it outlives hot swaps).
    """

    def __init__(
        self,
        *,
        switchboard: routing.Switchboard,
        starter: FlowStarter,
        replier: ports.Replier | None = None,
        no_match_text: str = ports.NO_MATCH_TEXT,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._on_event = on_event  # (platform) for every verified, de-duplicated event; metrics
        self._switchboard = switchboard
        self._starter = starter
        self._replier = replier
        self._no_match_text = no_match_text
        self._tasks: tasks.TaskSet[None] = tasks.TaskSet("dispatcher")

    def contexts_for(self, trigger: str) -> tuple[str, ...]:
        """The contexts of the current bindings of `trigger` (where its rejections are audited)."""
        found = self._switchboard.current.routes.get(trigger)
        return found.contexts if found is not None else ()

    def route(self, message: ports.EventMessage) -> routes.Route | ports.RouteOutcome:
        """Pick the binding for `message` in the current table (pure lookup, no side effects)."""
        found = self._switchboard.current.routes.get(message.trigger)
        if found is None:
            return ports.RouteOutcome("unknown_trigger", detail="no binding uses this trigger")
        chosen = found.select(message)
        if isinstance(chosen, routes.Miss):
            return ports.RouteOutcome(chosen.outcome, detail=chosen.detail)
        return chosen

    def dispatch(self, message: ports.EventMessage, *, reply_on_no_match: bool = False) -> ports.RouteOutcome:
        """Route `message` and start the chosen binding's flow; never raises.

        Args:
            message: the verified, de-duplicated event.
            reply_on_no_match: post the polite no-match (or not-ready) reply, for chat platforms
                that expect an answer.

        Returns:
            The outcome, also logged.
        """
        if self._on_event is not None:
            self._on_event(message.platform)
        return self._dispatch(message, reply_on_no_match)

    def _dispatch(self, message: ports.EventMessage, reply_on_no_match: bool) -> ports.RouteOutcome:
        table = self._switchboard.current
        chosen = self.route(message)
        if isinstance(chosen, ports.RouteOutcome):
            if chosen.outcome == "unknown_trigger" and self._switchboard.is_starting(message.trigger):
                # A new listener produced an event before its routes are published: hold it.
                self._tasks.spawn(self._after_publish(message, reply_on_no_match))
                return ports.RouteOutcome("deferred", detail="the trigger's routes are being published")
            log.info("event.not_routed", outcome=chosen.outcome, detail=chosen.detail, **_fields(message))
            if reply_on_no_match and chosen.outcome in ("no_match", "unknown_trigger"):
                self._tasks.spawn(self._reply(message.reply_target(), self._no_match_text))
            return chosen
        stall = table.stalled.get(chosen.name)
        if stall is not None:
            log.warning(
                "event.not_run", binding=chosen.name, context=chosen.context, reason=stall, **_fields(message)
            )
            if reply_on_no_match:
                self._tasks.spawn(self._reply(message.reply_target(), ports.STALLED_TEXT))
            return ports.RouteOutcome(
                "stalled",
                chosen.name,
                chosen.context,
                score=chosen.score,
                detail=f"binding {chosen.name}: {stall}",
            )
        binding = table.bindings.get(chosen.name)
        try:
            if binding is None:  # a compiled table always has the spec its routes name
                raise LookupError(f"no compiled spec for binding {chosen.name}")
            run_id = self._starter.start(binding, message)
        except errors.NotAccepting as exc:
            log.info("event.not_run", binding=chosen.name, reason=str(exc), **_fields(message))
            return ports.RouteOutcome(
                "stopping", binding=chosen.name, context=chosen.context, score=chosen.score, detail=str(exc)
            )
        except Exception as exc:
            log.exception("event.start_failed", binding=chosen.name, **_fields(message))
            return ports.RouteOutcome(
                "error", binding=chosen.name, context=chosen.context, score=chosen.score, detail=str(exc)
            )
        # Debug level: the flow engine logs (and audits) the run it starts; one line per event is enough.
        # Not even called unless debug logging is on: building the event costs more than routing.
        if debug_enabled():
            log.debug(
                "event.routed",
                binding=chosen.name,
                context=chosen.context,
                score=chosen.score,
                run_id=run_id,
                **_fields(message),
            )
        return ports.RouteOutcome("started", chosen.name, chosen.context, run_id, chosen.score)

    async def _after_publish(self, message: ports.EventMessage, reply_on_no_match: bool) -> None:
        try:
            async with asyncio.timeout(PUBLISH_WAIT_S):
                await self._switchboard.published()
        except TimeoutError:
            log.warning(
                "event.not_routed", outcome="deferred", detail="no table was published", **_fields(message)
            )
            return
        self._dispatch(message, reply_on_no_match)

    async def _reply(self, target: ports.ReplyTarget, text: str) -> None:
        if self._replier is None:
            return
        try:
            await self._replier.reply(target, text)
        except Exception:
            log.exception("event.reply_failed", platform=target.platform, trigger=target.trigger)

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Wait up to `grace` seconds for pending replies, then cancel the rest."""
        await self._tasks.drain(grace)
