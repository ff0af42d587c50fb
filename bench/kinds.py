#!/usr/bin/env python3
"""CPU per check, for each kind of check, at N = 1000: the probe engine alone.

    python3 bench/kinds.py                      # every kind, N = 1000, 3 waves each -> bench/kinds.md
    python3 bench/kinds.py --kind tcp,tcp+receive --n 200 --waves 5 --out -

For each kind, N real servers in another process (loopback only: 127.0.0.1 on
N ports, or 127.1.x.y for ping), N targets built from a config as the monitor
builds them (load_config, ProbeTarget.of), then one warm-up wave and WAVES
measured waves of monitor_rs.probe_all over all N at once.  The figure is the
monitor's CPU (getrusage: user + system, its own and its reaped children's,
which is what check = external costs) per check, the median over the waves.

A kind the monitor_rs.py beside this script does not have (its config is
refused, or no checker is registered) is skipped with a note; so is https
without openssl (no certificate), and ping where ICMP sockets cannot be had.
Python 3.9+ standard library only; takes well under 2 minutes.
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import monitor_rs as m  # noqa: E402

# kind -> (what its servers do (a --serve mode, or None), the config keys of its virtual service, what is shown)
KINDS = {
    "http": ("http", "check = http", "GET /, HTTP/1.0 200 with 3 bytes, close"),
    "https": ("https", "check = https", "the same over TLS (a fresh handshake each, RSA 2048)"),
    "tcp": ("hold", "check = tcp", "a connect (the server holds the connection)"),
    "tcp+receive": ("banner", "check = tcp\nreceive = 220", "read the banner `220 bench ESMTP` (SMTP-like)"),
    "tcp+request": ("pong", "check = tcp\nrequest = PING\\r\\n\nreceive = +PONG",
                    "send `PING\\r\\n`, read `+PONG` (Redis-like)"),
    "ping": (None, "check = ping", "ICMP echo to 127.1.x.y (needs root or ping_group_range)"),
    "dns": ("dns", "protocol = udp\ncheck = dns\nrequest = bench.example", "an A query, one answer, NOERROR"),
    "external": (None, "check = external\ncheckcommand = /bin/true", "run /bin/true VIP VPORT RIP RPORT"),
}
TIMEOUT = 5.0  # a wave's deadline per check: generous, the servers are one Python process each


def say(text):
    print(text, file=sys.stderr, flush=True)


###############################################################################
# The servers (another process: python3 bench/kinds.py --serve MODE N)


def dns_reply(query: bytes) -> bytes:
    """A NOERROR answer to an A query: 127.0.0.1 (no answer for other types); b"" for junk."""
    if len(query) < 17:
        return b""
    end = 12
    while end < len(query) and query[end]:
        end += 1 + query[end]
    if end + 5 > len(query):
        return b""
    question = query[12:end + 5]
    qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
    answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1]) if qtype == 1 else b""
    return query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if answers else 0, 0, 0) + question + answers


async def serve(mode: str, count: int, cert: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # N listeners and N connections
    context = None
    if mode == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, cert)

    async def talk(reader, writer):
        try:
            if mode in ("http", "https"):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                await writer.drain()
                return
            if mode == "banner":
                writer.write(b"220 bench ESMTP ready\r\n")
            if mode == "pong":
                if (await reader.readline()).strip() == b"PING":
                    writer.write(b"+PONG\r\n")
            while await reader.read(4096):  # hold it until the client goes
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            writer.close()

    class Dns(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            reply = dns_reply(data)
            if reply:
                self.transport.sendto(reply, addr)

    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        if mode == "dns":
            transport, _ = await loop.create_datagram_endpoint(Dns, local_addr=("127.0.0.1", 0))
            ports.append(transport.get_extra_info("sockname")[1])
        else:
            server = await asyncio.start_server(talk, "127.0.0.1", 0, ssl=context, backlog=1024)
            ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    os._exit(0)  # at once: nothing to tidy, and the connections' tasks need no cancelling


###############################################################################
# The bench


def servers(mode, count, cert):
    """Start the servers of one kind; (process, ports)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", mode, str(count), cert],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"the {mode} servers did not start (exit {proc.returncode})")
    return proc, json.loads(line)


def stop(proc):
    if proc is None:
        return
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def targets_of(kind, keys, addresses, folder):
    """The targets as the monitor builds them from a config; a ConfigError if this version refuses the kind."""
    path = os.path.join(folder, f"{kind}.conf")
    with open(path, "w") as handle:
        handle.write(f"[monitor]\ntimeout = {TIMEOUT}\n\n[virtual bench]\nvip = 127.0.0.1\nvport = 80\n"
                     f"type = m\n{keys}\nrs = {' '.join(addresses)}\n")
    (vs,) = m.load_config(path).services
    return [m.ProbeTarget.of(vs, rs.ip, rs.port) for rs in vs.servers]


def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wave(targets):
    """(CPU seconds, wall seconds, {reason: count} of the failed) of one probe_all over all targets."""
    wall, used = time.monotonic(), cpu()
    results = m.probe_all(targets, TIMEOUT, fanout=len(targets))
    used, wall = cpu() - used, time.monotonic() - wall
    failed = {}
    for r in results.values():
        if not r.ok:
            failed[r.reason] = failed.get(r.reason, 0) + 1
    return used, wall, failed


def bench(kind, n, waves, folder, cert):
    """One row: kind, what, figures or a note."""
    mode, keys, what = KINDS[kind]
    check = kind.split("+")[0]
    if check not in m.CHECKERS:
        return dict(kind=kind, what=what, note=f"skipped: this monitor_rs.py has no check = {check}")
    if mode == "https" and not cert:
        return dict(kind=kind, what=what, note="skipped: no openssl here to make a certificate")
    proc = None
    try:
        if mode is None:
            if kind == "ping":
                addresses = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]
            else:
                addresses = [f"127.0.0.1:{20000 + i}" for i in range(n)]
        else:
            proc, ports = servers(mode, n, cert)
            addresses = [f"127.0.0.1:{port}" for port in ports]
        try:
            targets = targets_of(kind, keys, addresses, folder)
        except m.ConfigError as exc:
            return dict(kind=kind, what=what, note=f"skipped: {str(exc).split(': ', 2)[-1]}")
        wave(targets)  # warm-up: imports, the TLS context, caches
        runs = [wave(targets) for _ in range(waves)]
    except Exception as exc:  # a kind that cannot run here (ping without ICMP sockets, ...) is a note
        return dict(kind=kind, what=what, note=f"skipped: {type(exc).__name__}: {exc}")
    finally:
        stop(proc)
    failed = {}
    for _, _, f in runs:
        for reason, count in f.items():
            failed[reason] = failed.get(reason, 0) + count
    return dict(kind=kind, what=what, n=n, waves=waves,
                cpu_ms=statistics.median(u for u, _, _ in runs) / n * 1000,
                cpu_ms_all=[round(u / n * 1000, 4) for u, _, _ in runs],
                wall_s=statistics.median(w for _, w, _ in runs),
                healthy=sum(n - sum(f.values()) for _, _, f in runs), checks=n * waves, failed=failed)


def certificate(folder):
    if not shutil.which("openssl"):
        return ""
    cert = os.path.join(folder, "cert.pem")
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                           "-days", "2", "-keyout", cert, "-out", cert + ".crt"], capture_output=True)
    if proc.returncode != 0:
        return ""
    with open(cert, "a") as handle, open(cert + ".crt") as crt:
        handle.write(crt.read())
    return cert


def report(rows, args, seconds):
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    head = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "monitor_rs.py"], capture_output=True,
                           text=True).stdout.strip()
    lines = [
        "# CPU per check, by kind of check",
        "",
        f"Machine: {cpus} CPUs ({model}), kernel {platform.release()}, Python {platform.python_version()}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.",
        "",
        f"monitor_rs.py at {head.stdout.strip() or '?'}{' (and changes not committed)' if dirty else ''}.",
        "",
        f"Command: `python3 bench/kinds.py{' ' + ' '.join(args) if args else ''}` ({seconds:.0f} s). "
        f"Per kind: N = {rows[0].get('n', '-') if rows else '-'} servers in another process on loopback, "
        "the targets built from a config as the monitor builds them, one warm-up wave, then "
        f"{rows[0].get('waves', '-') if rows else '-'} waves of `probe_all` over all N at once (deadline "
        f"{TIMEOUT:g} s). CPU = user + system of the bench process and its reaped children "
        "(getrusage), median over the waves, divided by N.",
        "",
        "| kind | what one check does | CPU per check | the waves (ms per check) | wave, wall | healthy |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        if "note" in row:
            lines.append(f"| {row['kind']} | {row['what']} | - | {row['note']} | | |")
            continue
        failed = ", ".join(f"{count} {reason}" for reason, count in sorted(row["failed"].items()))
        lines.append(f"| {row['kind']} | {row['what']} | {row['cpu_ms']:.3f} ms | "
                     f"{' / '.join(f'{x:.3f}' for x in row['cpu_ms_all'])} | {row['wall_s']:.2f} s | "
                     f"{row['healthy']} of {row['checks']}{' (failed: ' + failed + ')' if failed else ''} |")
    lines += [
        "",
        "Notes:",
        "- The probe engine alone: no ipvsadm listing, decision, log or state file, no interpreter idling "
        "between passes. bench/run.py's \"CPU per server check\" (http, N = 1000) is the monitor's whole CPU "
        "over an hour divided by the servers it checked, so it is higher than the http row here.",
        "- Loopback charges part of the servers' TCP work (softirq) to the prober's system time.",
        "- check = external counts the children it forks (fork, exec, wait): their CPU is the check's.",
        "",
    ]
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        try:
            asyncio.run(serve(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
        except KeyboardInterrupt:
            pass
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default=",".join(KINDS), help="kinds, comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--n", type=int, default=1000, help="servers (checks per wave), default 1000")
    parser.add_argument("--waves", type=int, default=3, help="measured waves per kind, default 3")
    parser.add_argument("--out", default=os.path.join(HERE, "kinds.md"), help="the table (- for stdout)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind {', '.join(unknown)}: the kinds are {', '.join(KINDS)}")
    m.raise_open_file_limit(2 * args.n + 256)
    began = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="monitor_rs-kinds-") as folder:
        cert = certificate(folder) if "https" in kinds else ""
        for kind in kinds:
            say(f"{kind}: N = {args.n} ...")
            row = bench(kind, args.n, args.waves, folder, cert)
            say("  " + (row["note"] if "note" in row else f"{row['cpu_ms']:.3f} ms per check"))
            rows.append(row)
    text = report(rows, sys.argv[1:], time.monotonic() - began)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as handle:
            handle.write(text)
        say(f"written: {args.out}")


if __name__ == "__main__":
    main()
