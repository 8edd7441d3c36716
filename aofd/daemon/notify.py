"""sd_notify without libsystemd: datagrams to `$NOTIFY_SOCKET` (READY, STATUS, WATCHDOG, STOPPING).

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. An abstract socket name
(leading `@`) is supported. Send failures are swallowed: the service manager going away
must never take the daemon down with it.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends service-manager notifications; `watchdog_interval` is half of `$WATCHDOG_USEC`."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> bool:
        if not self._address:
            return False
        payload = "\n".join(lines).encode()
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto(payload, self._address)
            return True
        return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))
