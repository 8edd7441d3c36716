"""Shipping a Context's audit log with a real rsyslog (`imfile` -> `omfwd`) and the configuration of
docs/siem.md (read from it): a real `rsyslogd` in the foreground (its own config, work directory and
pid file; nothing of the system's) follows `<audit_dir>/*/audit-*.jsonl` while the audit journal
writes and rotates small segments, and forwards each line over TCP to a loopback receiver here.
Every line arrives once, as the JSON line the journal wrote, in order within its segment (across a
rotation imfile may interleave the old segment's last lines with the new one's first:
`aofd.audit.seq` orders them); after a restart of rsyslog it sends only what it had not sent, after
a SIGKILL too, and a SIGKILL while the collector is down loses nothing.

rsyslog is a Debian package (`.ci/run` installs it where it is missing); without `rsyslogd` the test
skips and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aofd.audit import journal, records, segment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RSYSLOGD = shutil.which("rsyslogd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
DEADLINE_S = 30.0

DOCS = Path(__file__).resolve().parents[2] / "docs" / "siem.md"


def docs_config(*, work: Path, port: int, audit_dir: Path) -> str:
    """The rsyslog configuration of docs/siem.md, pointed at this test's directories and receiver."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### rsyslog (imfile)") :]
    config = section[section.index("```\n") + 4 :]
    config = config[: config.index("```")]
    for old, new in (
        ("/var/lib/aofd-rsyslog", str(work)),
        ('target="siem-collector.example.com" port="5514"', f'target="127.0.0.1" port="{port}"'),
        ("/var/log/aofd/*/audit-*.jsonl", f"{audit_dir}/*/audit-*.jsonl"),
    ):
        assert config.count(old) == 1, f"docs/siem.md's rsyslog configuration no longer has {old!r}"
        config = config.replace(old, new)
    return config


class Receiver:
    """A loopback TCP server that keeps every byte it is sent, on any number of connections."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = int(self.server.getsockname()[1])
        self.data = bytearray()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.server.settimeout(0.2)
        self.acceptor = threading.Thread(target=self._accept, name="rsyslog-receiver", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self.stopped.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                with self.lock:
                    self.data.extend(chunk)

    def lines(self) -> list[bytes]:
        with self.lock:
            *complete, _partial = bytes(self.data).split(b"\n")
        return complete

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)


@contextlib.contextmanager
def rsyslogd(config: Path, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`rsyslogd -n -f CONFIG -i PIDFILE`: foreground, this config only; stopped with SIGTERM."""
    assert RSYSLOGD is not None
    log = (work / "rsyslogd.out").open("wb")
    proc = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(config), "-i", str(work / "rsyslogd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_until(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], work: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    output = (work / "rsyslogd.out").read_text(errors="replace")
    raise AssertionError(f"timed out waiting for {what} (rsyslogd exit {proc.poll()}):\n{output[-4000:]}")


def written(context_dir: Path) -> list[bytes]:
    """The Context's lines in `aofd.audit.seq` order (segment names do not sort by seq)."""
    lines = [line for path in segment.list_segments(context_dir) for line in path.read_bytes().splitlines()]
    return sorted(lines, key=seq)


def command(n: int, *, size: int = 8) -> dict[str, object]:
    """A `command.finished` record whose output excerpt is `size` lines."""
    return records.build(
        "command.finished",
        context="prod",
        agent="k8s-ops",
        run_id=f"run-{n // 10}",
        process=records.Process(("kubectl", "get", "pods", f"web-{n}"), exit_code=0),
        output=f"pod web-{n} Running ü\n" * size,  # non-ASCII: escaped in the line, never split
    )


def seq(line: bytes) -> int:
    return int(json.loads(line)["aofd"]["audit"]["seq"])


@pytest.mark.skipif(
    RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog; .ci/run does)"
)
async def test_rsyslog_ships_every_line_once_in_order_across_rotations(
    tmp_path: Path, options: segment.JournalOptions
) -> None:
    audit_dir = tmp_path / "audit"
    work = tmp_path / "rsyslog"
    work.mkdir()
    receiver = Receiver()
    config = tmp_path / "rsyslog.conf"
    config.write_text(docs_config(work=work, port=receiver.port, audit_dir=audit_dir))
    small = dataclasses.replace(options, max_segment_bytes=4 * 1024)
    try:
        async with journal.AuditLog(audit_dir=audit_dir, options=small) as log:
            await log.open(["prod"])  # the first segment exists before the shipper starts
            with rsyslogd(config, work) as proc:
                wait_until(
                    lambda: len(receiver.lines()) == 1, "the first line (audit.file.opened)", proc, work
                )
                for n in range(60):
                    await log.write("prod", command(n), durable=n % 7 == 0 or n == 59)
                expected = written(audit_dir / "prod")
                wait_until(lambda: len(receiver.lines()) >= len(expected), "every line", proc, work)
            # rsyslogd has stopped (SIGTERM): whatever it would send, a duplicate too, has been sent.
            state_files = list(work.glob("imfile-state:*"))
        assert len(receiver.lines()) == len(expected)
        # While it is down aofd restarts and goes on (into one segment: big enough for what follows);
        # started again, rsyslog sends only what it had not sent, from the positions it kept.
        async with journal.AuditLog(audit_dir=audit_dir, options=options) as log:
            for n in range(60, 65):
                await log.write("prod", command(n), durable=n == 64)
        expected = written(audit_dir / "prod")
        with rsyslogd(config, work) as proc:
            wait_until(
                lambda: len(receiver.lines()) >= len(expected), "the lines written meanwhile", proc, work
            )
    finally:
        receiver.close()  # joins the readers: every byte sent has been read

    segments = segment.list_segments(audit_dir / "prod")
    assert len(segments) >= 5  # several rotations happened while rsyslog was reading
    got = receiver.lines()
    # Once each, byte for byte (so valid JSON, the same JSON): nothing lost, nothing twice.
    assert sorted(got, key=seq) == expected
    assert len(got) == len(set(got)) == len(expected)
    # In order within each segment. Across a rotation imfile may send the first lines of the new
    # segment before the last ones of the old (two files, read concurrently); `aofd.audit.seq`
    # orders them (docs/siem.md).
    for path in segments:
        file_id = json.loads(path.read_bytes().splitlines()[0])["aofd"]["audit"]["file_id"]
        arrived = [line for line in got if json.loads(line)["aofd"]["audit"]["file_id"] == file_id]
        assert arrived == path.read_bytes().splitlines(), path.name
    # Every segment but the last two ended with a rotation; the journal's restart started the last.
    assert [json.loads(line)["event"]["action"] for line in got].count("audit.file.rotated") == len(
        segments
    ) - 2
    assert state_files  # imfile keeps its position per file in its work directory


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: rsyslogd gets no chance to write its state or flush a queue."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.skipif(
    RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog; .ci/run does)"
)
async def test_rsyslog_killed_resends_nothing_it_had_sent_and_loses_nothing(
    tmp_path: Path, options: segment.JournalOptions
) -> None:
    """After a SIGKILL of an idle rsyslogd (everything sent), a restart sends only the new lines:
    `persistStateAfterSubmission` kept each file's position as it went. Killed in the middle of a
    burst, nothing is lost and what is sent twice is a few lines (at-least-once: the SIEM
    deduplicates on `aofd.context` + `aofd.audit.seq`).
    """
    audit_dir = tmp_path / "audit"
    work = tmp_path / "rsyslog"
    work.mkdir()
    receiver = Receiver()
    config = tmp_path / "rsyslog.conf"
    config.write_text(docs_config(work=work, port=receiver.port, audit_dir=audit_dir))
    small = dataclasses.replace(options, max_segment_bytes=4 * 1024)
    try:
        async with journal.AuditLog(audit_dir=audit_dir, options=small) as log:
            await log.open(["prod"])
            with rsyslogd(config, work) as proc:
                for n in range(30):
                    await log.write("prod", command(n), durable=n == 29)
                expected = written(audit_dir / "prod")
                wait_until(lambda: len(receiver.lines()) >= len(expected), "every line", proc, work)
                kill(proc)
            before_kill = len(expected)
            idle_kill = len(receiver.lines())
            for n in range(30, 40):
                await log.write("prod", command(n), durable=n == 39)
            expected = written(audit_dir / "prod")
            with rsyslogd(config, work) as proc:
                wait_until(lambda: len(receiver.lines()) >= len(expected), "the new lines", proc, work)
                after_restart = receiver.lines()
                for n in range(40, 100):  # a burst, killed once part of it has arrived (perhaps all)
                    await log.write("prod", command(n), durable=n == 99)
                wait_until(lambda: len(receiver.lines()) > len(expected) + 5, "part of the burst", proc, work)
                kill(proc)
            expected = written(audit_dir / "prod")
            with rsyslogd(config, work) as proc:
                wait_until(
                    lambda: set(receiver.lines()) >= set(expected), "the rest of the burst", proc, work
                )
            # stopped with SIGTERM: anything it would still send has been sent
    finally:
        receiver.close()

    got = receiver.lines()
    assert idle_kill == before_kill  # every line once
    assert sorted(set(got), key=seq) == expected  # nothing lost, nothing that was not written
    assert sorted(after_restart, key=seq) == expected[: len(after_restart)]  # the idle kill re-sent nothing
    duplicates = len(got) - len(set(got))
    assert duplicates <= 60, duplicates  # at most what was in flight, never the whole log again


@pytest.mark.skipif(
    RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog; .ci/run does)"
)
async def test_rsyslog_killed_while_the_collector_is_down_loses_nothing(
    tmp_path: Path, options: segment.JournalOptions
) -> None:
    """While the collector is unreachable the documented configuration holds no line in a memory queue
    (a SIGKILL would lose it once imfile had recorded its position): imfile waits for the action, and
    the restarted rsyslogd sends every line when the collector is back.
    """
    audit_dir = tmp_path / "audit"
    work = tmp_path / "rsyslog"
    work.mkdir()
    receiver = Receiver()
    port = receiver.port
    config = tmp_path / "rsyslog.conf"
    config.write_text(docs_config(work=work, port=port, audit_dir=audit_dir))
    try:
        async with journal.AuditLog(audit_dir=audit_dir, options=options) as log:
            await log.open(["prod"])
            with rsyslogd(config, work) as proc:
                wait_until(lambda: len(receiver.lines()) == 1, "the first line", proc, work)
                receiver.close()  # the collector goes away
                for n in range(20):
                    await log.write("prod", command(n), durable=n == 19)
                out = work / "rsyslogd.out"
                wait_until(lambda: b"cannot connect" in out.read_bytes(), "a refused connection", proc, work)
                kill(proc)
        expected = written(audit_dir / "prod")
        got_before = receiver.lines()
        receiver = Receiver(port)
        with rsyslogd(config, work) as proc:
            wait_until(
                lambda: set(got_before + receiver.lines()) >= set(expected), "the queued lines", proc, work
            )
    finally:
        receiver.close()
    got = got_before + receiver.lines()
    assert sorted(set(got), key=seq) == expected
