#!/usr/bin/env python3
"""Line-protocol servers that misbehave, in their own process, for the tcp check's tests.

    python3 tests/talkers.py IP MODE [MODE ...]

Listens on one port of IP per MODE; prints one JSON line with their ports (in
the order given), then serves until stdin closes.  Each connection is served
in a thread of its own.  MODES:

    closes    say "220-not what you want", read a line if one comes within
              0.3 s, and close (a clean close: nothing left unread)
    silent    accept, read whatever comes, never answer
    dribble   1500 bytes of "x", then "+PONG\\r\\n" one byte per TCP segment,
              20 ms apart (TCP_NODELAY), then stay open
    flood     "y" without end (never the text a check waits for)

Another process on purpose: the probe must be timed against a server that
does not share its GIL.
"""

import json
import socket
import sys
import threading
import time


def serve(conn, mode):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "closes":
            conn.sendall(b"220-not what you want\r\n")
            conn.settimeout(0.3)
            data = b""
            while b"\n" not in data:
                data += conn.recv(4096) or b"\n"
            return
        if mode == "dribble":
            conn.sendall(b"x" * 1500)
            for byte in b"+PONG\r\n":
                time.sleep(0.02)
                conn.sendall(bytes([byte]))
        if mode == "flood":
            while True:
                conn.sendall(b"y" * 16384)
        while conn.recv(4096):  # silent, and dribble once done: hold the line until the client goes
            pass
    except OSError:
        pass
    finally:
        conn.close()


def accept(listener, mode):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


def main():
    ip, modes = sys.argv[1], sys.argv[2:]
    ports = []
    for mode in modes:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((ip, 0))
        listener.listen(64)
        ports.append(listener.getsockname()[1])
        threading.Thread(target=accept, args=(listener, mode), daemon=True).start()
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
