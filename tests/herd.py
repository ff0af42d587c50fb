#!/usr/bin/env python3
"""A herd of real servers in their own process, for timing and stall tests.

    python3 tests/herd.py N MODE [IP]

Listens on N ports of IP (127.0.0.1), one selector loop for all; prints one
JSON line with their "ip:port" addresses, then serves.  MODE: `ok` (HTTP 200
at once), `delay:SECONDS` (HTTP 200 that long after the request came: slow
but healthy), `status:500` (HTTP 500 at once) or `hang` (read the request,
never answer).  With HERD_ANSWERED set, the wall-clock time of each answer
sent is appended to that file, a line each.  Commands on stdin, one
per line:

    stop PID SECONDS   at the next connection accepted, SIGSTOP PID, wait,
                       SIGCONT it, then go on; prints "stopped PID" when done.
    quit

Another process on purpose: a server thread in the test process would share
its GIL with the test and hide the very stalls these tests are about.
"""

import json
import os
import resource
import selectors
import signal
import socket
import sys
import time

ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
FAILED = b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"


def main():
    count, mode = int(sys.argv[1]), sys.argv[2]
    delay = float(mode.split(":")[1]) if mode.startswith("delay:") else 0.0
    ip = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # N listeners and N connections
    sel = selectors.DefaultSelector()
    addresses = []
    for _ in range(count):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((ip, 0))
        listener.listen(128)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, "listener")
        addresses.append(f"{ip}:{listener.getsockname()[1]}")
    os.set_blocking(sys.stdin.fileno(), False)
    sel.register(sys.stdin, selectors.EVENT_READ, "command")
    print(json.dumps(addresses), flush=True)
    armed = None  # (pid, seconds)
    held = []  # hung connections, kept open
    due = []  # (when, connection): answers to send later
    pending = b""
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            answer(due.pop(0)[1])
        for key, _ in sel.select(due[0][0] - now if due else None):
            if key.data == "command":
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    words = line.decode().split()
                    if words[:1] == ["quit"]:
                        return
                    if words[:1] == ["stop"]:
                        armed = (int(words[1]), float(words[2]))
            elif key.data == "listener":
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                if armed:
                    pid, seconds = armed
                    armed = None
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(seconds)
                    os.kill(pid, signal.SIGCONT)
                    print(f"stopped {pid}", flush=True)
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, bytearray())
            else:
                conn, buf = key.fileobj, key.data
                try:
                    data = conn.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                buf += data
                if data and b"\r\n\r\n" not in buf:
                    continue
                sel.unregister(conn)
                if data and mode == "hang":
                    held.append(conn)
                    continue
                if data and delay:
                    due.append((time.monotonic() + delay, conn))  # in arrival order: stays sorted
                    continue
                answer(conn if data else None)
                conn.close()


def answer(conn):
    if conn is None:
        return
    if os.environ.get("HERD_ANSWERED"):  # written before the answer goes: never later than it
        with open(os.environ["HERD_ANSWERED"], "a") as handle:
            handle.write(f"{time.time()}\n")
    try:
        conn.sendall(FAILED if sys.argv[2] == "status:500" else ANSWER)
    except OSError:
        pass
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
