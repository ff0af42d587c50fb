"""THROWAWAY proof test for the VM tier (tests/vm/run).

Runs real ipvsadm commands inside the guest and records their exact
stdout/stderr bytes (repr'd) and exit codes into a capture file, so that the
fake ipvsadm used by the host-side tests can be compared against reality.

Only loopback addresses (127.0.0.x, ::1) are ever used.
Delete this file once the captured behaviour has been folded into the fake.
"""

import os
import socket
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

pytestmark = [
    pytest.mark.ipvs,
    pytest.mark.skipif(
        os.environ.get("MONITOR_RS_IPVS") != "1",
        reason="needs a real IPVS kernel (run via tests/vm/run)",
    ),
]

OUT_DIR = os.environ.get("MONITOR_RS_VM_OUT", "/tmp")
CAPTURE = os.path.join(OUT_DIR, "vm_capture.txt")


class Recorder:
    def __init__(self):
        self.lines = []

    def note(self, text):
        self.lines.append(text)

    def run(self, *args):
        proc = subprocess.run(["ipvsadm", *args], capture_output=True)
        self.lines.append(
            "$ ipvsadm %s\n  rc=%d\n  stdout=%r\n  stderr=%r"
            % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
        )
        return proc

    def sh(self, cmd):
        proc = subprocess.run(cmd, shell=True, capture_output=True)
        self.lines.append(
            "$ %s\n  rc=%d\n  stdout=%r\n  stderr=%r"
            % (cmd, proc.returncode, proc.stdout, proc.stderr)
        )
        return proc

    def flush(self):
        with open(CAPTURE, "w") as fh:
            fh.write("\n".join(self.lines) + "\n")


def ipvs_modules():
    with open("/proc/modules") as fh:
        return sorted(l.split()[0] for l in fh if l.startswith("ip_vs"))


def test_capture_real_ipvsadm():
    r = Recorder()
    try:
        _capture(r)
    finally:
        r.flush()


def _capture(r):
    r.note("# modules before anything: %r" % ipvs_modules())
    r.run("--version")
    r.run("-C")
    r.run("-Ln")

    # --- IPv4 TCP service, one DR (-g) and one NAT (-m) destination --------
    assert r.run("-A", "-t", "127.0.0.1:80", "-s", "wrr").returncode == 0
    r.note("# modules after -A -s wrr: %r" % ipvs_modules())
    assert r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.11:8080",
                 "-g", "-w", "3").returncode == 0
    assert r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080",
                 "-m", "-w", "2").returncode == 0
    r.run("-Ln")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.run("-Sn")
    r.run("-Ln", "--exact")

    # --- error cases -------------------------------------------------------
    r.note("# add an existing destination (same as above, -m)")
    r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-m", "-w", "2")
    r.note("# add existing -g dest using the port as typed (8080)")
    r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.11:8080", "-g", "-w", "3")
    r.note("# add existing -g dest using the stored port (80)")
    r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.11:80", "-g", "-w", "3")
    r.note("# missing service listing")
    r.run("-Ln", "-t", "127.0.0.1:81")
    r.note("# -a on a missing service")
    r.run("-a", "-t", "127.0.0.1:81", "-r", "127.0.0.11:8080", "-m", "-w", "1")
    r.note("# -e on a missing destination")
    r.run("-e", "-t", "127.0.0.1:80", "-r", "127.0.0.99:8080", "-m", "-w", "1")
    r.note("# -d a destination that never existed (no fwd flag / with -m)")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.99:8080")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.99:8080", "-m")
    r.note("# -D a missing service")
    r.run("-D", "-t", "127.0.0.1:81")

    # --- edits -------------------------------------------------------------
    r.note("# -e weight change / weight 0 on the -m dest")
    r.run("-e", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-m", "-w", "5")
    r.run("-e", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-m", "-w", "0")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.note("# -e on -m dest WITHOUT -m (defaults to -g => port rewritten?)")
    r.run("-e", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-w", "4")
    r.run("-Ln", "-t", "127.0.0.1:80")

    # --- -d port behaviour -------------------------------------------------
    r.note("# -d on the NAT dest without -m (port rewritten to 80 => missing?)")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.note("# -d on the DR dest as typed at add time (127.0.0.11:8080)")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.11:8080")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.note("# -d it again (now really missing)")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.11:8080")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.11:80")
    r.note("# -d on the NAT dest with -m")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-m")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.note("# -d on NAT dest with explicit -m after removal")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.12:8080", "-m")
    r.note("# -d without any port on the -r")
    r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.13", "-g", "-w", "1")
    r.run("-Ln", "-t", "127.0.0.1:80")
    r.run("-d", "-t", "127.0.0.1:80", "-r", "127.0.0.13")
    r.note("# service with rr + persistent, and tunnel dest")
    r.run("-A", "-t", "127.0.0.2:443", "-s", "rr", "-p", "300")
    r.note("# modules after -s rr: %r" % ipvs_modules())
    r.run("-a", "-t", "127.0.0.2:443", "-r", "127.0.0.21:8443", "-i", "-w", "1")
    r.run("-a", "-t", "127.0.0.2:443", "-r", "127.0.0.22:8443", "-m", "-w", "1")
    r.run("-A", "-u", "127.0.0.3:53", "-s", "wlc")
    r.run("-a", "-u", "127.0.0.3:53", "-r", "127.0.0.31:5353", "-m")

    # --- IPv6 --------------------------------------------------------------
    have_v6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")
    r.sh("cat /proc/net/if_inet6")
    if have_v6:
        r.run("-A", "-t", "[::1]:80", "-s", "wrr")
        r.run("-a", "-t", "[::1]:80", "-r", "[::1]:8080", "-m", "-w", "2")
        r.run("-a", "-t", "[::1]:80", "-r", "[::1]:8080", "-m", "-w", "2")
        r.run("-Ln", "-t", "[::1]:80")
        r.run("-d", "-t", "[::1]:80", "-r", "[::1]:8080")
        r.run("-Ln", "-t", "[::1]:81")
    else:
        r.note("# IPv6 loopback not available")

    # --- FWM ---------------------------------------------------------------
    r.run("-A", "-f", "100", "-s", "wrr")
    r.run("-a", "-f", "100", "-r", "127.0.0.41:8080", "-g", "-w", "1")
    r.run("-a", "-f", "100", "-r", "127.0.0.42", "-m", "-w", "1")
    r.run("-Ln", "-f", "100")
    r.run("-Ln", "-f", "101")
    r.run("-d", "-f", "100", "-r", "127.0.0.41:8080")
    r.run("-Ln", "-f", "100")
    if have_v6:
        r.run("-A", "-f", "200", "-6", "-s", "rr")
        r.run("-a", "-f", "200", "-6", "-r", "[::1]:8080", "-m")

    # --- full listings -----------------------------------------------------
    r.run("-Ln")
    r.run("-Sn")
    r.run("-L")  # without -n (name resolution of loopback)
    r.run("-Ln", "--stats")
    r.run("-Ln", "--rate")
    r.run("-Ln", "--thresholds")
    r.run("-Ln", "--persistent-conn")
    r.run("-Lcn")
    r.note("# bad args")
    r.run("-A", "-t", "127.0.0.1:80", "-s", "nosuchsched")
    r.run("-A", "-t", "127.0.0.1", "-s", "wrr")
    r.run("-a", "-t", "127.0.0.1:80", "-r", "127.0.0.11:8080", "-w", "-1")
    r.run("-C")
    r.run("-Ln")
    r.run("-Sn")

    # --- can a backend listen on 127.0.0.11:8080 and be reached? ----------
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok from %s\n" % self.server.server_address[0].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    try:
        srv = HTTPServer(("127.0.0.11", 8080), H)
    except OSError as e:
        r.note("# http bind 127.0.0.11:8080 FAILED: %r" % e)
        raise
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with urllib.request.urlopen("http://127.0.0.11:8080/health",
                                    timeout=5) as resp:
            r.note("# http GET 127.0.0.11:8080 -> %d %r"
                   % (resp.status, resp.read()))
    finally:
        srv.shutdown()
        srv.server_close()
