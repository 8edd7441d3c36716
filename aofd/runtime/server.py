"""The trigger HTTP server: `/hooks/<platform>/<trigger>` on `DaemonConfig.listen`.

Owns the aiohttp application and its lifecycle. Per request it looks the trigger's listener up
in the *current* routing table (`Switchboard.current`, a dict lookup: O(1)) and hands the request
to `Listener.handle`. An unknown trigger, a disabled one, or a platform in the path that is not the
trigger's type answers 404 with a generic body. The listener caps the body (`max_body_bytes`, 413
before any HMAC); the application's `client_max_size` is the hard cap for everything else.

The daemon mounts extra routes (the git push hook `/hooks/git/<source>`) through `extra_routes` or
`TriggerServer.add_route` before `start()`.

It must not verify, parse or route events itself; listeners do that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web

from aofd.runtime import routing
from aofd.runtime.listeners import base

log = structlog.get_logger()

HOOK_PATH = "/hooks/{platform}/{trigger}"
DEFAULT_CLIENT_MAX_SIZE = 32 * 1024 * 1024
"""The server-wide body cap; per-trigger caps are smaller and checked first by the listener."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SWITCHBOARD_KEY = web.AppKey("aofd_switchboard", routing.Switchboard)


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def make_app(
    switchboard: routing.Switchboard,
    *,
    extra_routes: Iterable[web.RouteDef] = (),
    client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
) -> web.Application:
    """The aiohttp application serving the trigger hooks (and `extra_routes`)."""
    app = web.Application(client_max_size=client_max_size)
    app[SWITCHBOARD_KEY] = switchboard
    app.router.add_routes(list(extra_routes))
    app.router.add_route("*", HOOK_PATH, _hook_for(switchboard))
    return app


def _hook_for(switchboard: routing.Switchboard) -> Handler:
    """The `/hooks/{platform}/{trigger}` handler, bound to `switchboard` (read per request)."""

    async def hook(request: web.Request) -> web.StreamResponse:
        match = request.match_info
        trigger = match["trigger"]
        listener = switchboard.current.listeners.get(trigger)
        # Schedule listeners answer 404 themselves.
        if listener is None or listener.platform != match["platform"]:
            platform = match["platform"]
            log.info("hook.unknown", platform=platform, trigger=trigger, remote=request.remote or "")
            return base.generic(404)
        return await listener.handle(request)

    return hook


class TriggerServer:
    """Runs `make_app()` on a host and port; `start()` binds, `stop()` closes."""

    def __init__(
        self,
        *,
        switchboard: routing.Switchboard,
        listen: str = "127.0.0.1:8080",
        client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
        shutdown_timeout: float = 10.0,
        lingering_time: float = 0.5,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self._switchboard = switchboard
        self._client_max_size = client_max_size
        self._shutdown_timeout = shutdown_timeout
        # How long the rest of a refused (413) upload is read and discarded so that the client can
        # read the answer; then the connection is closed. aiohttp's default is 10 s.
        self._lingering_time = lingering_time
        self._extra: list[web.RouteDef] = []
        self._runner: web.AppRunner | None = None

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Mount another route (e.g. `POST /hooks/git/{source}`); only before `start()`."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the server starts")
        self._extra.append(web.route(method, path, handler))

    async def start(self) -> None:
        """Bind and serve; with port 0 the chosen port is in `self.port` afterwards."""
        app = make_app(self._switchboard, extra_routes=self._extra, client_max_size=self._client_max_size)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self._shutdown_timeout, lingering_time=self._lingering_time
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                self.port = int(addr[1])
                break
        log.info("trigger_server.started", host=self.host, port=self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("trigger_server.stopped", host=self.host, port=self.port)
