"""A mail relay on loopback, in its own process, for the emailalert tests.

    python tests/smtp_sink.py sink OUT [PORT]    a real SMTP server (aiosmtpd): every message it
                                                 takes is appended to OUT as one JSON line {"from":
                                                 envelope sender, "to": [recipients], "data": text,
                                                 "at": when it came, time.time()}
    python tests/smtp_sink.py silent - [PORT]    accepts TCP connections and never says a word

Either listens on 127.0.0.1 (PORT, or one the kernel picks) and prints its port, one line,
once it listens.
"""

import asyncio
import json
import socket
import sys
import time


class Keep:
    """aiosmtpd handler: append each message to a file, one JSON line, then say 250."""

    def __init__(self, path):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        record = {"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                  "data": envelope.content.decode("utf-8", "replace"), "at": time.time()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return "250 OK"


def sink(out, port):
    from aiosmtpd.smtp import SMTP

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: SMTP(Keep(out)), "127.0.0.1", port,
                                                        reuse_address=True))
    print(server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()


def silent(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    held = []
    while True:
        conn, _ = listener.accept()
        held.append(conn)  # open, silent: the client waits for a greeting that never comes


if __name__ == "__main__":
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if sys.argv[1] == "sink":
        sink(sys.argv[2], port)
    else:
        silent(port)
    time.sleep(1e9)
