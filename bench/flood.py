"""A connect flood on a UNIX socket, bounded in time: what the benchmark's row 7 and the
hardening test run, two at a time, against a local agent.

    python flood.py PATH SECONDS     prints how many connections it made

Each connection sends one byte and is kept open (up to 200 at once), so it sits in the
agent's handshake until its deadline or eviction.
"""

import socket
import sys
import time

path, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
held, made = [], 0
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.send(b"x")
    except OSError:
        s.close()
        continue
    made += 1
    held.append(s)
    if len(held) > 200:
        held.pop(0).close()
print(made)
