#!/usr/bin/env python3
"""The status endpoint's peers, each in its own process, for tests/test_listen.py.

    python3 tests/listen_peers.py backend IP
    python3 tests/listen_peers.py clients IP PORT

backend: one HTTP real server on a free port of IP; prints {"port": N}, then
serves (200 "ok", or 500 after the command `fail`, 200 again after `ok`).
Commands on stdin, one per line; `quit` or end of input ends it.

clients: hostile clients of the status endpoint at IP:PORT, all at once, until
stdin says `quit` (or ends); prints {"ready": true} once every kind has made
its first connection, and at the end one JSON line of what was done (how many
connections of each kind, how many the server closed, the bytes sent, and the
longest the server kept a slowloris connection, from its first line, and the
95th and 99th percentiles of those times):

    slowloris   SLOW connections that send a request head one header at a time,
                a line every 0.2 s, never ending it; reopened when closed
    flood       new connections as fast as FLOOD_RATE a second allows, each
                silent, held until the server closes it
    garbage     binary noise (16 KiB) and a blank line; reopened when closed
    huge        a request line and a header of 64 KiB; reopened when closed
    readers     whole GET /metrics requests whose answers are never read, each
                connection dropped unread after 3 s

Another process on purpose: the attack must go on at its own pace, whatever
the monitor and the test do, and a stall of the monitor must be its own.
"""

import json
import os
import resource
import selectors
import socket
import sys
import time

SLOW, HUGE, GARBAGE, READERS = 100, 8, 8, 32
FLOOD_RATE, FLOOD_MAX = 600, 400  # new connections a second; at most this many open at once
OK = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
FAIL = b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"


def commands(sel, pending):
    """Lines from stdin that arrived (None when it ended)."""
    chunk = os.read(sys.stdin.fileno(), 4096)
    if not chunk:
        return None
    pending += chunk
    lines = []
    while b"\n" in pending:
        line, rest = bytes(pending).split(b"\n", 1)
        pending[:] = rest
        lines.append(line.decode().strip())
    return lines


def backend(ip):
    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, 0))
    listener.listen(128)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "listener")
    os.set_blocking(sys.stdin.fileno(), False)
    sel.register(sys.stdin, selectors.EVENT_READ, "command")
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    answer, pending = OK, bytearray()
    while True:
        for key, _ in sel.select():
            if key.data == "command":
                lines = commands(sel, pending)
                if lines is None or "quit" in lines:
                    return
                for line in lines:
                    answer = FAIL if line == "fail" else OK
                    print(line, flush=True)
            elif key.data == "listener":
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, bytearray())
            else:
                conn, buf = key.fileobj, key.data
                try:
                    data = conn.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                buf += data
                if data and b"\r\n\r\n" not in buf:
                    continue
                sel.unregister(conn)
                if data:
                    try:
                        conn.send(answer)
                    except OSError:
                        pass
                conn.close()


class Attack:
    def __init__(self, ip, port):
        self.family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.where = (ip, port)
        self.sel = selectors.DefaultSelector()
        self.count = {kind: 0 for kind in ("slowloris", "flood", "garbage", "huge", "readers")}
        self.closed_by_server = dict(self.count)
        self.bytes_sent = 0
        self.longest = 0.0  # seconds: the longest a slowloris connection was kept by the server
        self.kept = []  # seconds each slowloris connection was kept (from its first line, as seen here)
        self.open = {kind: 0 for kind in self.count}
        self.due = []  # (when, sock, state): slowloris lines to send
        self.held = []  # (when, sock, state): readers' connections, closed unread then

    def connect(self, kind):
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(self.where)
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return
        self.count[kind] += 1
        self.open[kind] += 1
        state = {"kind": kind, "step": 0, "sent": 0}
        self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, state)

    def drop(self, sock, state, by_server=True):
        self.sel.unregister(sock)
        sock.close()
        self.open[state["kind"]] -= 1
        if by_server:
            self.closed_by_server[state["kind"]] += 1
            if "since" in state:
                self.kept.append(time.monotonic() - state["since"])
                self.longest = max(self.longest, self.kept[-1])

    def send(self, sock, state, data):
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.drop(sock, state)
            return -1
        self.bytes_sent += sent
        return sent

    def writable(self, sock, state):
        kind = state["kind"]
        if kind == "flood":
            self.sel.modify(sock, selectors.EVENT_READ, state)  # silent: wait to be closed
        elif kind == "slowloris":
            if state["step"] == 0 and self.send(sock, state, b"GET /metrics HTTP/1.1\r\n") > 0:
                state["step"], state["since"] = 1, time.monotonic()
                self.sel.modify(sock, selectors.EVENT_READ, state)
                self.due.append((time.monotonic() + 0.2, sock, state))
        elif kind == "garbage":  # one burst, then wait for the server to close it
            noise = os.urandom(16384).replace(b"\n", b"?") + b"\r\n\r\n"
            if self.send(sock, state, noise) > 0:
                self.sel.modify(sock, selectors.EVENT_READ, state)
        elif kind == "huge":  # a request line and 64 KiB of one header, then wait for the close
            if self.send(sock, state, b"GET /metrics HTTP/1.1\r\nX-Huge: " + b"a" * 65536) > 0:
                self.sel.modify(sock, selectors.EVENT_READ, state)
        elif kind == "readers":
            if self.send(sock, state, b"GET /metrics HTTP/1.1\r\nHost: monitor\r\n\r\n") > 0:
                self.sel.unregister(sock)  # never reads its answer: drops the connection after a while
                self.held.append((time.monotonic() + 3.0, sock, state))

    def readable(self, sock, state):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(sock, state)

    def run(self):
        os.set_blocking(sys.stdin.fileno(), False)
        self.sel.register(sys.stdin, selectors.EVENT_READ, None)
        pending = bytearray()
        wanted = {"slowloris": SLOW, "garbage": GARBAGE, "huge": HUGE, "readers": READERS}
        flood_next, ready = time.monotonic(), False
        while True:
            now = time.monotonic()
            for kind, n in wanted.items():
                while self.open[kind] < n:
                    self.connect(kind)
            while now >= flood_next and self.open["flood"] < FLOOD_MAX:
                self.connect("flood")
                flood_next += 1.0 / FLOOD_RATE
            flood_next = max(flood_next, now - 0.1)
            if not ready and all(self.count.values()):
                print(json.dumps({"ready": True}), flush=True)
                ready = True
            still = []
            for when, sock, state in self.due:
                if sock.fileno() < 0:
                    continue
                if when > now:
                    still.append((when, sock, state))
                elif self.send(sock, state, b"X-Slow-%d: yes\r\n" % state["sent"]) >= 0:
                    state["sent"] += 1
                    still.append((now + 0.2, sock, state))
            self.due = still
            for when, sock, state in [h for h in self.held if h[0] <= now]:
                sock.close()
                self.open["readers"] -= 1
            self.held = [h for h in self.held if h[0] > now]
            for key, events in self.sel.select(0.01):
                if key.data is None:
                    lines = commands(self.sel, pending)
                    if lines is None or "quit" in lines:
                        return
                    continue
                sock, state = key.fileobj, key.data
                if events & selectors.EVENT_READ:
                    self.readable(sock, state)
                    if sock.fileno() < 0:
                        continue
                if events & selectors.EVENT_WRITE:
                    self.writable(sock, state)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if sys.argv[1] == "backend":
        backend(sys.argv[2])
        return
    attack = Attack(sys.argv[2], int(sys.argv[3]))
    attack.run()
    now = time.monotonic()  # the slowloris connections still open count too
    for key in list(attack.sel.get_map().values()):
        if key.data and "since" in key.data:
            attack.kept.append(now - key.data["since"])
            attack.longest = max(attack.longest, attack.kept[-1])
    kept = sorted(attack.kept) or [0.0]
    print(json.dumps({"connections": attack.count, "closed_by_server": attack.closed_by_server,
                      "bytes_sent": attack.bytes_sent, "longest_slowloris": round(attack.longest, 3),
                      "slowloris_p99": round(kept[int(0.99 * (len(kept) - 1))], 3),
                      "slowloris_p95": round(kept[int(0.95 * (len(kept) - 1))], 3)}),
          flush=True)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
