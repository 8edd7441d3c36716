"""The etcd test kit itself: the ports it picks for several members never collide."""

from __future__ import annotations

import socket

from tests.cluster.etcdkit import free_ports


def test_free_ports_are_distinct_and_bindable() -> None:
    for _ in range(20):
        ports = free_ports(6)
        assert len(set(ports)) == 6
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # released again: etcd can take it
