"""A stand-in for kubectl that records what it was given (installed by tests with a shebang).

It appends one JSON line to the file named by `FAKE_RECORD` in its environment (tests set it
through the Context's `env` map, since the guard builds the child env from scratch): its
argv, its whole environment, its cwd and pid. Tokens in argv select a behaviour:

- `hang`: start a grandchild that sleeps, record its pid, ignore SIGTERM, sleep forever;
- `flood`: write 1 GiB of output to stdout as fast as possible;
- `fail`: write to stderr and exit 3;
- `slow`: sleep 0.3 s, then behave as usual (lets two commands overlap);
- anything else: print `ok` and exit 0.
"""

import json
import os
import signal
import subprocess
import sys
import time

argv = sys.argv
record = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid()}
if "hang" in argv:
    child = subprocess.Popen([sys.executable, "-IS", "-c", "import time; time.sleep(600)"])
    record["grandchild"] = child.pid
path = os.environ.get("FAKE_RECORD")
if path:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
if "hang" in argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(60)
if "flood" in argv:
    chunk = b"x" * (1 << 20)
    out = sys.stdout.buffer
    for _ in range(1024):
        out.write(chunk)
    out.flush()
    sys.exit(0)
if "slow" in argv:
    time.sleep(0.3)
if "fail" in argv:
    sys.stderr.write("error: the server doesn't have a resource type\n")
    sys.exit(3)
print("ok")
