"""The trigger HTTP server: `/hooks/<platform>/<name>` on `DaemonConfig.listen`.

Owns the path space of the listen address. It is fixed and two levels deep, so the server splits
the path itself: `/hooks/<platform>/<name>` and nothing else. Per request it looks the trigger's
listener up in the *current* routing table (`Switchboard.current`, a dict lookup: O(1)) and hands
the request to `Listener.handle`. An unknown trigger, a disabled one, a platform in the path that
is not the trigger's type, or any other path answers 404 with a generic body. A webhook
Trigger's own `config.path` (upstream's field, e.g. `/webhook/pagerduty`) is served too, looked up
in the same table; the compile stage refuses two triggers on one path and paths under `/hooks/`
other than the trigger's own.

The daemon mounts its own hooks on a platform name no trigger type uses (the git push hook
`/hooks/git/<source>`) with `TriggerServer.add_hook` before `start()`; such a handler gets the
request and the name from the path.

Listening, and the connection limits (timeouts, the connection cap), are
`aofd.runtime.httpserver`'s (`Limits`, counted in `TriggerServer.stats`); bodies are capped by
the listener (`max_body_bytes`, 413 before any HMAC) and by the daemon's own hooks. It must not
verify, parse or route events itself; listeners do that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog

from aofd.runtime import httpserver, ports, routing
from aofd.runtime.listeners import base

log = structlog.get_logger()

HOOK_PREFIX = "hooks"

HookHandler = Callable[[ports.HttpRequest, str], Awaitable[ports.HttpResponse]]
"""A daemon hook: `(request, name)` where `name` is the last path segment."""


class _Hook:
    __slots__ = ("handler", "methods")

    def __init__(self, handler: HookHandler, methods: frozenset[str]) -> None:
        self.handler = handler
        self.methods = methods


class HookServer:
    """The request handler: splits `/hooks/<platform>/<name>` and calls a daemon hook or a listener."""

    def __init__(self, switchboard: routing.Switchboard, hooks: Iterable[tuple[str, _Hook]] = ()) -> None:
        self._switchboard = switchboard
        self._hooks = dict(hooks)

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        path = request.path
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != HOOK_PREFIX or parts[0]:
            own = self._switchboard.current.paths.get(path)
            if own is not None:
                return await own.handle(request)
            return self._not_found(request, "", path)
        platform = parts[2]
        name = parts[3]
        listener = self._switchboard.current.listeners.get(name)
        if listener is not None and listener.platform == platform:
            return await listener.handle(request)
        hook = self._hooks.get(platform)
        if hook is not None and name:
            if request.method not in hook.methods:
                return base.generic(405)
            return await hook.handler(request, name)
        # Schedule listeners are in the table too, and answer 404 themselves.
        return self._not_found(request, platform, name)

    @staticmethod
    def _not_found(request: ports.HttpRequest, platform: str, name: str) -> ports.HttpResponse:
        log.info("hook.unknown", platform=platform, trigger=name, remote=request.remote)
        return base.generic(404)


class TriggerServer:
    """Serves `HookServer` on a host and port; `start()` binds, `stop()` closes."""

    def __init__(
        self,
        *,
        switchboard: routing.Switchboard,
        listen: str = "127.0.0.1:8080",
        shutdown_timeout: float = 10.0,
        lingering_time: float = 0.5,
        limits: httpserver.Limits | None = None,
        stats: httpserver.Stats | None = None,
    ) -> None:
        self.host, self.port = httpserver.parse_address(listen)
        self._switchboard = switchboard
        self._shutdown_timeout = shutdown_timeout
        self._lingering_time = lingering_time
        self._limits = limits
        self.stats = stats if stats is not None else httpserver.Stats()
        self._hooks: dict[str, _Hook] = {}
        self._server: httpserver.Server | None = None
        self._closing: httpserver.Server | None = None  # while stop() waits for connections

    def add_hook(self, platform: str, handler: HookHandler, *, methods: Iterable[str] = ("POST",)) -> None:
        """Serve `/hooks/<platform>/<name>` with `handler(request, name)`; only before `start()`.

        `platform` must not be a trigger type's platform (those belong to listeners).
        """
        if self._server is not None:
            raise RuntimeError("hooks must be added before the server starts")
        if not platform or "/" in platform:
            raise ValueError(f"hook platform must be one path segment, got {platform!r}")
        self._hooks[platform] = _Hook(handler, frozenset(m.upper() for m in methods))

    async def start(self) -> None:
        """Bind and serve; with port 0 the chosen port is in `self.port` afterwards."""
        server = httpserver.Server(
            HookServer(self._switchboard, self._hooks.items()),
            address=f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}",
            shutdown_timeout=self._shutdown_timeout,
            lingering_time=self._lingering_time,
            name="webhook",
            limits=self._limits,
            stats=self.stats,
        )
        await server.start()
        self._server = server
        self.port = server.port
        log.info(
            "trigger_server.started", host=self.host, port=self.port, max_connections=server.max_connections
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._closing = server
            try:
                await server.stop()
            finally:
                self._closing = None
            log.info("trigger_server.stopped", host=self.host, port=self.port)

    def abort_connections(self) -> int:
        """Drop every open connection now, also while `stop()` waits for them (a hard stop)."""
        server = self._server or self._closing
        return server.abort_connections() if server is not None else 0
