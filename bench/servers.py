#!/usr/bin/env python3
"""Many fake real servers on port 80 of loopback addresses, in one asyncio process.

Each address has a mode, changed at run time:

  ok       HTTP 200 to any request (what both monitors call healthy)
  slow     the same 200, sent SLOW_DELAY (0.6 s) after the request has been read
  500      HTTP 500 to any request (a server that answers, but with an error)
  refuse   no listener: the kernel answers the SYN with a RST (connection refused)
  hang     accepts, reads, never answers (curl without --max-time waits forever)
  syndrop  a listener with backlog 0 whose accept queue is filled by one connection
           that is never accepted: the kernel drops every further SYN, so a
           connect only ends by the client's own timeout

An HTTP/1.0 request (keepalived, curl -0, monitor_rs without keepalive) is answered
HTTP/1.0 with Connection: close, and the connection closed; an HTTP/1.1 one without
Connection: close (monitor_rs's keepalive = N; ldirectord's LWP says close) is answered
HTTP/1.1 and the connection kept for the next request, as nginx does.  A mode applies to
the kept connections too from their next request on; refuse and syndrop close them, as a
server that dies or stops does.

Protocol on stdin/stdout, one JSON object a line:
  in   {"set": {"127.1.0.1": "hang", ...}}     out  {"t": <time.time() after the switch>}
  in   {"stats": true}                          out  {"connections": N, "requests": N}
  in   {"quit": true}  (or end of stdin)        the process exits
At start it prints {"ready": true, "t": ...} once every listener is up.

Usage: servers.py MODES.json   (a JSON object {address: mode})
Only ever binds and connects to the addresses it is given (loopback in the bench).
"""

import asyncio
import json
import resource
import socket
import sys
import time

PORT = 80
BODY = b"ok\n"
RESPONSE = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(BODY), BODY))
ERROR = (b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 6\r\nConnection: close\r\n\r\nerror\n")
KEPT_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(BODY), BODY))
KEPT_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nerror\n"
SLOW_DELAY = 0.6
MODES = ("ok", "refuse", "hang", "syndrop", "slow", "500")
ANSWERING = ("ok", "slow", "500", "hang")  # modes with an asyncio listener


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listening_socket(ip, backlog):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, PORT))
    sock.listen(backlog)
    return sock


class Stats:
    connections = 0
    requests = 0


class Server:
    """One address: an asyncio listener (ok, hang), none (refuse) or a full queue (syndrop)."""

    def __init__(self, ip):
        self.ip = ip
        self.writers = set()  # the connections open now (closed when the server "dies")
        self.mode = "refuse"
        self.aserver = None  # asyncio.Server while mode is ok, slow, 500 or hang
        self.raw = None  # backlog-0 listener while mode is syndrop
        self.filler = None  # the connection that fills its accept queue

    async def handle(self, reader, writer):
        Stats.connections += 1
        self.writers.add(writer)
        try:
            while True:
                if self.mode == "hang":  # hold the connection, never answer, until the peer goes
                    while await reader.read(65536):
                        pass
                    return
                try:  # (an idle kept connection waits for its next request as long as it likes)
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                Stats.requests += 1
                kept = b" HTTP/1.1\r\n" in head.split(b"\r\n", 1)[0] + b"\r\n" and \
                    b"\r\nconnection: close\r\n" not in head.lower()
                if self.mode == "slow":
                    await asyncio.sleep(SLOW_DELAY)
                if self.mode == "hang":
                    continue
                if kept:
                    writer.write(KEPT_ERROR if self.mode == "500" else KEPT_RESPONSE)
                else:
                    writer.write(ERROR if self.mode == "500" else RESPONSE)
                await writer.drain()
                if not kept:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def _close_raw(self):
        for sock in (self.filler, self.raw):
            if sock is not None:
                sock.close()
        self.filler = self.raw = None

    async def set(self, mode):
        if mode not in MODES:
            raise ValueError(mode)
        if mode in ANSWERING:
            self._close_raw()
            if self.aserver is None:
                self.aserver = await asyncio.start_server(
                    self.handle, sock=listening_socket(self.ip, 128), backlog=128)
        else:
            if self.aserver is not None:
                self.aserver.close()  # closes the listening socket now
                self.aserver = None
            for writer in list(self.writers):  # and its connections, as a server that dies
                writer.close()
            self._close_raw()
            if mode == "syndrop":
                self.raw = listening_socket(self.ip, 0)
                self.filler = socket.create_connection((self.ip, PORT), timeout=2)
        self.mode = mode


async def main(path):
    raise_nofile()
    with open(path) as handle:
        wanted = json.load(handle)
    servers = {ip: Server(ip) for ip in wanted}
    for ip, mode in wanted.items():
        await servers[ip].set(mode)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "t": time.time()}) + "\n")
    out.flush()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        request = json.loads(line)
        if request.get("quit"):
            break
        if "set" in request:
            for ip, mode in request["set"].items():
                await servers[ip].set(mode)
            reply = {"t": time.time()}
        elif request.get("stats"):
            reply = {"connections": Stats.connections, "requests": Stats.requests}
        else:
            reply = {"error": "unknown request"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
