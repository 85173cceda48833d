"""Baselines the benchmark measures rpcctl against.

python baselines.py rpyc-server PATH   a plain RPyC server with one exposed ping
python baselines.py echo-server PATH   a raw socket echo server
python baselines.py rpyc-once PATH     import rpyc, connect, call once (a whole process)
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def rpyc_server(path: str) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class PingService(rpyc.Service):  # type: ignore[misc]
        def exposed_ping(self) -> str:
            return "pong"

    server = ThreadedServer(PingService, socket_path=path, listener_timeout=None)
    print("READY", flush=True)
    server.start()


def echo_server(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    print("READY", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rpyc_once(path: str) -> None:
    import rpyc

    conn = rpyc.utils.factory.unix_connect(path)
    assert conn.root.ping() == "pong"
    conn.close()


if __name__ == "__main__":
    {"rpyc-server": rpyc_server, "echo-server": echo_server, "rpyc-once": rpyc_once}[sys.argv[1]](
        sys.argv[2]
    )
    os._exit(0)
