"""Runs started by hand: `POST /api/v1/runs` over real loopback HTTP starts one run of a binding whose trigger
is Manual, through the real dispatcher (stalled bindings are not run), as the named token's operator; other
bindings, unknown names and callers without a named token are refused with a clear 4xx."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aofd.daemon import admin, view
from aofd.runtime import ports
from aofd.testing import resources
from tests.daemon.test_admin_auth import TOKEN, FakeView, call, serving
from tests.runtime.fakes import harness

ALICE = "alice-0123456789-token-abcdef"


class ManualView(FakeView):
    """`FakeView` whose `start_run` is the daemon's own (`view.AdminView.start_run`) over a test rig."""

    def __init__(self, rig: harness.Rig) -> None:
        super().__init__()
        runtime = types.SimpleNamespace(switchboard=rig.switchboard, dispatcher=rig.dispatcher)
        self._d = types.SimpleNamespace(runtime=runtime)

    def start_run(self, binding: str, *, text: str, user: ports.UserRef) -> ports.RouteOutcome:
        return view.AdminView.start_run(self, binding, text=text, user=user)  # type: ignore[arg-type]


@pytest.fixture
async def rig() -> AsyncIterator[harness.Rig]:
    by_hand = resources.trigger("by-hand", "Manual")
    hook = resources.trigger("hook", "HTTP", webhook_secret="s")
    async with harness.Rig() as r:
        await r.apply(
            [
                resources.binding("restart-api", by_hand, context_name="prod"),
                resources.binding("hooks", hook, context_name="prod"),
            ]
        )
        yield r


@pytest.fixture
async def bound(rig: harness.Rig) -> AsyncIterator[str]:
    api = admin.AdminApi(ManualView(rig), token=TOKEN, named_tokens={"alice": ALICE})
    async with serving(api) as address:
        yield address


async def run(address: str, body: Any, token: str = ALICE) -> tuple[int, dict[str, Any]]:
    status, text, _ = await call(address, "POST", "/api/v1/runs", token=token, body=body)
    return status, json.loads(text)


async def test_a_named_operator_starts_a_manual_binding(rig: harness.Rig, bound: str) -> None:
    status, answer = await run(bound, {"binding": "restart-api", "input": "restart the api pods"})
    assert 202 == status, answer
    assert ("started", "restart-api", "prod", "admin:alice") == (
        answer["outcome"],
        answer["binding"],
        answer["context"],
        answer["user"],
    )
    [(name, message)] = rig.starter.calls
    assert answer["run_id"]
    assert ("restart-api", "manual", "by-hand", "restart the api pods") == (
        name,
        message.platform,
        message.trigger,
        message.text,
    )
    assert ports.UserRef("admin:alice", "alice", "admin") == message.user


@pytest.mark.parametrize(
    ("body", "token", "status", "says"),
    [
        ({"binding": "hooks", "input": "x"}, ALICE, 409, "not bound to a Manual trigger"),
        ({"binding": "nope", "input": "x"}, ALICE, 404, "no binding 'nope'"),
        ({"binding": "restart-api"}, ALICE, 400, "expected JSON"),
        ({"binding": "restart-api", "input": " \n"}, ALICE, 400, "the input is empty"),
        ("not an object", ALICE, 400, "expected JSON"),
        ({"binding": "restart-api", "input": "x"}, TOKEN, 403, "named admin token"),
    ],
)
async def test_refusals_say_why(
    rig: harness.Rig, bound: str, body: Any, token: str, status: int, says: str
) -> None:
    got, answer = await run(bound, body, token)
    assert (status, True) == (got, says in answer["error"]), answer
    assert [] == rig.starter.calls


async def test_without_a_token_nothing_starts(rig: harness.Rig, bound: str) -> None:
    status, _text, _ = await call(
        bound, "POST", "/api/v1/runs", body={"binding": "restart-api", "input": "x"}
    )
    assert 401 == status
    assert [] == rig.starter.calls


async def test_a_stalled_manual_binding_is_not_run() -> None:
    """The binding cannot run here (its trigger did not start): 503, as for any event; nothing starts."""
    by_hand = resources.trigger("by-hand", "Manual")
    async with harness.Rig(fail_to_start={"by-hand"}) as rig:
        await rig.apply([resources.binding("restart-api", by_hand, context_name="prod")])
        api = admin.AdminApi(ManualView(rig), named_tokens={"alice": ALICE})
        async with serving(api) as address:
            status, answer = await run(address, {"binding": "restart-api", "input": "x"})
        assert [] == rig.starter.calls
    assert (503, "stalled") == (status, answer["outcome"])


BOB = "bob-0123456789-token-abcdefgh"


async def test_the_bindings_users_filter_names_who_may_start_it() -> None:
    """A binding with `users: [admin:bob]`: alice (another named token) gets 403 and the refusal is
    audited as `trigger.rejected` in the binding's Context; bob starts it. A trigger's own `users`
    filter is applied the same way."""
    by_hand = resources.trigger("by-hand", "Manual")
    gated = resources.trigger("gated", "Manual", users=["admin:alice"])
    async with harness.Rig() as rig:
        await rig.apply(
            [
                resources.binding(
                    "restart-api", by_hand, context_name="prod", filters={"users": ["admin:bob"]}
                ),
                resources.binding("drain-node", gated, context_name="prod"),
            ]
        )
        api = admin.AdminApi(ManualView(rig), token=TOKEN, named_tokens={"alice": ALICE, "bob": BOB})
        async with serving(api) as address:
            refused = await run(address, {"binding": "restart-api", "input": "restart"}, ALICE)
            started = await run(address, {"binding": "restart-api", "input": "restart"}, BOB)
            gate_refused = await run(address, {"binding": "drain-node", "input": "drain"}, BOB)
            gate_started = await run(address, {"binding": "drain-node", "input": "drain"}, ALICE)
        assert [403, 202, 403, 202] == [refused[0], started[0], gate_refused[0], gate_started[0]]
        assert "does not admit admin:alice" in refused[1]["error"]
        assert [("restart-api", "admin:bob"), ("drain-node", "admin:alice")] == [
            (n, m.user.id) for n, m in rig.starter.calls
        ]
        await rig.settle(lambda: rig.audit.actions().count("trigger.rejected") == 2)
        rejected = [(c, e) for c, e in rig.audit.events if e.action == "trigger.rejected"]
        assert [("prod", "user_not_allowed", "admin:alice"), ("prod", "user_not_allowed", "admin:bob")] == [
            (c, e.reason, e.user.id if e.user else "") for c, e in rejected
        ]
