"""What HTTP requests made on behalf of a flow may reach: HTTP nodes and the `http` tool.

Pure: parses a URL and answers why it is refused, or None. The engine and the tool layer both
apply it, so a model cannot reach what a flow author could not.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse


@dataclasses.dataclass(frozen=True, slots=True)
class HttpPolicy:
    """What an HTTP node may reach.

    - only `http://` and `https://`, no credentials in the URL, redirects are not followed;
    - link-local and metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are refused
      when written as an IP literal, and so are `localhost`/loopback unless `allow_loopback`;
    - when `allowed_hosts` is non-empty, the host must equal an entry or end with `.<entry>`;
    - the response body is read up to `max_body_bytes`, the request takes at most `timeout` seconds
      (and never past the run's deadline).
    """

    allowed_hosts: frozenset[str] = frozenset()
    allow_loopback: bool = False
    max_body_bytes: int = 1024 * 1024
    timeout: float = 30.0

    def check(self, url: str) -> str | None:
        """Why `url` is refused, or None."""
        try:
            parts = urllib.parse.urlsplit(url)
            hostname = parts.hostname
            _ = parts.port  # raises on a port that is not a number in range
        except ValueError as exc:
            return f"the URL cannot be parsed ({exc})"
        if parts.scheme not in ("http", "https"):
            return f"scheme {parts.scheme or '(none)'} is not allowed (http and https only)"
        if parts.username or parts.password:
            return "credentials in the URL are not allowed"
        host = (hostname or "").lower().rstrip(".")
        if not host:
            return "the URL names no host"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # [::ffff:a.b.c.d] connects to a.b.c.d
        if address is not None:
            if address.is_link_local or str(address) == "fd00:ec2::254":
                return f"address {host} is link-local (cloud metadata) and not allowed"
            # 0.0.0.0 and [::] connect to this host, like loopback.
            if (address.is_loopback or address.is_unspecified) and not self.allow_loopback:
                return f"loopback address {host} is not allowed"
        elif (host == "localhost" or host.endswith(".localhost")) and not self.allow_loopback:
            return "localhost is not allowed"
        if self.allowed_hosts and not any(host == h or host.endswith("." + h) for h in self.allowed_hosts):
            return f"host {host} is not in the allowed hosts"
        return None
