"""Real HTTP servers on loopback addresses, whose behaviour a test switches live.

Modes: ok (200 with `body`), http500, hang (accept, never answer), drip (one
byte every 0.3 s), garbage (not HTTP), endless-headers, huge-body, reset.
`stop()` closes the listener (connections are refused), `start()` reopens it
on the same address and port.  `requests` holds the head of every request
received (bytes, up to the blank line); with `tls=(cert, key)` it speaks TLS,
and `server_names` holds the server name (SNI) each client sent.
"""

import socket
import ssl
import threading
import time


class Backend:
    def __init__(self, ip="127.0.0.1", port=0, mode="ok", body="hello from backend", tls=None):
        self.ip, self.port, self.mode, self.body = ip, port, mode, body
        self.listener = None
        self.hits = 0
        self.requests = []
        self.server_names = []
        self.open_conns = []
        self.lock = threading.Lock()
        self.context = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(*tls)
            self.context.sni_callback = lambda sock, name, context: self.server_names.append(name)
        self.start()

    @property
    def address(self):
        return f"{self.ip}:{self.port}"

    def start(self):
        sock = socket.socket(socket.AF_INET6 if ":" in self.ip else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.ip, self.port))
        sock.listen(256)
        self.port = sock.getsockname()[1]
        self.listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def stop(self):
        sock, self.listener = self.listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self.lock:
            for conn in self.open_conns:
                try:
                    conn.close()
                except OSError:
                    pass
            self.open_conns = []

    def _accept(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self.lock:
                self.hits += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        mode = self.mode
        try:
            conn.settimeout(30)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            with self.lock:
                self.requests.append(data.partition(b"\r\n\r\n")[0])
            if mode == "hang":
                with self.lock:
                    self.open_conns.append(conn)
                return  # keep it open, say nothing
            if mode == "ok":
                body = self.body.encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            elif mode == "http500":
                conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror")
            elif mode == "drip":
                for byte in b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok":
                    conn.sendall(bytes([byte]))
                    time.sleep(0.3)
            elif mode == "garbage":
                conn.sendall(b"\x16\x03\x01\x02\x00 this is not http\r\n\r\n")
            elif mode == "endless-headers":
                conn.sendall(b"HTTP/1.0 200 OK\r\n")
                for i in range(100000):
                    conn.sendall(b"X-Filler-%d: yes\r\n" % i)
            elif mode == "huge-body":
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                while True:
                    conn.sendall(b"x" * 65536)
            elif mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.sendall(b"HTTP/1.0 200")
        except OSError:
            pass
        finally:
            if mode != "hang":
                try:
                    conn.close()
                except OSError:
                    pass
