"""The dispatcher: the listeners' single entry point, from a verified event to a started run.

`Dispatcher.dispatch(message)` looks the trigger up in the *current* routing table, lets its
compiled routes (`aofd.specs.routes`) pick the binding, and calls `FlowStarter.start(binding,
message)` with the binding's compiled spec, reporting a `ports.RouteOutcome`:

- no binding matches: a logged outcome and, where the platform expects an answer, a polite
  reply ("No flow is bound to this channel") — never a random binding;
- the chosen binding cannot run on this host now (its Context or provider is not ready):
  `stalled`, with the Stalled reason; a lower binding is never tried instead (that could run a
  prod channel's event under another Context). The event is answered, not run (webhooks: 503
  with `Retry-After`, `aofd.runtime.listeners.base.outcome_response`), counted (`on_not_run`),
  and audited in the binding's Context as `trigger.received` with `event.outcome: failure`, the
  reason and the stall message: the first event of a second at once, the rest of that second in
  one summary record when it ends (`aofd.suppressed` = how many, with their delivery ids), so a
  burst cannot flood the log and no event goes unrecorded;
- otherwise `started`, with the binding, Context and run id.

It must not block: `FlowStarter.start` returns a run id at once (the engine runs the flow in
its own task), and replies go out in tasks the dispatcher owns and drains on `aclose()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
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
        on_not_run: Callable[[str, str], None] | None = None,
        audit: ports.AuditSink | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._on_event = on_event  # (platform) for every verified, de-duplicated event; metrics
        self._on_not_run = on_not_run  # (platform, stall reason) for every event answered, not run
        self._audit = audit
        self._sleep = sleep
        # Invariant: binding id -> the not-run events of its open one-second window, not yet audited.
        self._windows: dict[str, _Window] = {}
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

    def start_binding(self, binding: str, message: ports.EventMessage) -> ports.RouteOutcome:
        """Start binding id `binding` of `message.trigger` for `message`, which names it (a run started
        by hand, `aofd.runtime.listeners.manual`): only the `users` filters (the binding's and the
        trigger's) are matched, against the operator's id (`admin:<name>`), and a stalled binding is
        not run, as for any event. `unknown_binding` when the trigger's current routes have no such
        binding; `filtered` (logged at warning, audited as `trigger.rejected` with reason
        `user_not_allowed` in the binding's Context) when a `users` filter does not name the operator."""
        if self._on_event is not None:
            self._on_event(message.platform)
        table = self._switchboard.current
        found = table.routes.get(message.trigger)
        chosen = next((r for r in found.routes if r.name == binding), None) if found is not None else None
        if chosen is None:
            detail = f"trigger {message.trigger} has no enabled binding {binding}"
            log.info("event.not_routed", outcome="unknown_binding", detail=detail, **_fields(message))
            return ports.RouteOutcome("unknown_binding", detail=detail)
        gate = found.gate if found is not None else None
        for filters in (chosen.filters, gate.filters if gate is not None else None):
            if filters is not None and not filters.any_user and message.user.id not in filters.users:
                return self._refused(chosen, message)
        return self._start(table, chosen, message, reply_on_no_match=False)

    def _refused(self, chosen: routes.Route, message: ports.EventMessage) -> ports.RouteOutcome:
        """A run by hand whose operator a `users` filter does not name: logged, audited, not run."""
        detail = f"binding {chosen.name} does not admit {message.user.id} (its users filter)"
        log.warning("event.not_routed", outcome="filtered", detail=detail, **_fields(message))
        if self._audit is not None and chosen.context:
            record = ports.AuditEvent(
                "trigger.rejected",
                outcome="failure",
                reason="user_not_allowed",
                user=message.user,
                trigger={"platform": message.platform, "name": message.trigger, "binding": chosen.name},
                http_status=403,
                message=detail,
            )
            self._tasks.spawn(
                self._write_audit(self._audit, chosen.context, record), name=f"audit:{chosen.name}"
            )
        return ports.RouteOutcome("filtered", chosen.name, chosen.context, detail=detail)

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
        return self._start(table, chosen, message, reply_on_no_match=reply_on_no_match)

    def _start(
        self,
        table: routing.RoutingTable,
        chosen: routes.Route,
        message: ports.EventMessage,
        *,
        reply_on_no_match: bool,
    ) -> ports.RouteOutcome:
        """Start the chosen binding's flow, or answer why it cannot run now."""
        stall = table.stalled.get(chosen.name)
        if stall is not None:
            self._not_run(message, chosen, stall)
            if reply_on_no_match:
                self._tasks.spawn(self._reply(message.reply_target(), ports.STALLED_TEXT))
            return ports.RouteOutcome(
                "stalled",
                chosen.name,
                chosen.context,
                score=chosen.score,
                detail=f"binding {chosen.name}: {stall.message}",
                reason=stall.reason,
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

    def _not_run(self, message: ports.EventMessage, chosen: routes.Route, stall: routing.Stall) -> None:
        """Log, count and audit (throttled per binding) an event its stalled binding cannot run."""
        log.warning(
            "event.not_run",
            binding=chosen.name,
            context=chosen.context,
            reason=stall.reason,
            detail=stall.message,
            **_fields(message),
        )
        if self._on_not_run is not None:
            self._on_not_run(message.platform, stall.reason)
        audit = self._audit
        if audit is None or not chosen.context:
            return
        window = self._windows.get(chosen.name)
        if window is not None:
            window.add(message, stall)
            return
        self._windows[chosen.name] = _Window(chosen.context)
        record = not_run_record(message, binding=chosen.name, stall=stall)
        self._tasks.spawn(self._write_audit(audit, chosen.context, record), name=f"audit:{chosen.name}")
        self._tasks.spawn(self._close_window(chosen.name), name=f"audit-window:{chosen.name}")

    async def _close_window(self, binding: str) -> None:
        await self._sleep(NOT_RUN_WINDOW_S)
        await self._flush_window(binding)

    async def _flush_window(self, binding: str) -> None:
        """Audit the events of `binding`'s window left out so far, in one summary record."""
        window = self._windows.pop(binding, None)
        if window is None or window.last is None or self._audit is None:
            return
        message, stall = window.last
        record = not_run_record(
            message, binding=binding, stall=stall, suppressed=window.count, delivery_ids=window.delivery_ids
        )
        await self._write_audit(self._audit, window.context, record)

    async def _write_audit(self, audit: ports.AuditSink, context: str, record: ports.AuditEvent) -> None:
        try:
            await audit.write(context, record)
        except Exception:
            log.exception("event.not_run_audit_failed", context=context, trigger=record.trigger)

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
        """Audit the open not-run windows, wait up to `grace` seconds for pending replies, then
        cancel the rest."""
        for binding in list(self._windows):
            await self._flush_window(binding)
        await self._tasks.drain(grace)


NOT_RUN_WINDOW_S = 1.0
"""Not-run events of one binding within this many seconds after an audited one share a summary."""
MAX_WINDOW_IDS = 50


class _Window:
    """The not-run events of one binding since its last audited one (the summary to write)."""

    __slots__ = ("context", "count", "delivery_ids", "last")

    def __init__(self, context: str) -> None:
        self.context = context
        self.count = 0
        self.delivery_ids: list[str] = []
        self.last: tuple[ports.EventMessage, routing.Stall] | None = None

    def add(self, message: ports.EventMessage, stall: routing.Stall) -> None:
        self.count += 1
        if message.delivery_id and len(self.delivery_ids) < MAX_WINDOW_IDS:
            self.delivery_ids.append(message.delivery_id)
        self.last = (message, stall)


def not_run_record(
    message: ports.EventMessage,
    *,
    binding: str,
    stall: routing.Stall,
    suppressed: int = 0,
    delivery_ids: Sequence[str] = (),
) -> ports.AuditEvent:
    """The audit event of an event `binding` could not run (`trigger.received`, outcome `failure`).

    `event.reason` is the Stalled reason, `message` says why in one line. A summary record stands
    for `suppressed` more events of the binding's last second (`delivery_ids`: the first 50 of
    them); the first of a second is recorded alone, with `suppressed` 0.
    """
    trigger = {
        "platform": message.platform,
        "name": message.trigger,
        "binding": binding,
        "event_type": message.event_type,
        "delivery_id": message.delivery_id,
    }
    return ports.AuditEvent(
        "trigger.received",
        outcome="failure",
        reason=stall.reason,
        user=message.user if message.user.id else None,
        trigger=trigger,
        message=(
            f"{suppressed} more events not run: binding {binding} cannot run now: {stall.message}"
            if suppressed
            else f"event not run: binding {binding} cannot run now: {stall.message}"
        ),
        details={"run": {"started": False}, "suppressed": suppressed}
        | ({"suppressed_delivery_ids": list(delivery_ids)} if delivery_ids else {}),
    )
