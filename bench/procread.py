#!/usr/bin/env python3
"""Cost of one read of the IPVS table: /proc/net/ip_vs against an `ipvsadm -Ln` process.

    python3 bench/procread.py                 # N = 40, 1000, 10000 destinations (10 per service)
    python3 bench/procread.py --n 40,100000

Natively there is no IPVS: the /proc figure reads a synthetic file in the kernel's format
(tmpfs, so without the kernel's own formatting), and the `ipvsadm -Ln` figure runs a process
that prints the same table as ipvsadm would (/bin/cat of it: a process's fork, exec and pipe,
as ipvsadm costs at least) and parses it with parse_listing.  "per service" is what a pass
did before: one process per virtual service (N / 10 of them).  In the VM, tests/test_ipvs_proc.py
::test_cost_of_a_read_proc_and_ipvsadm measures the real file and the real ipvsadm.
Median of repeated reads, wall clock; Python 3.9+ standard library only.
"""

import argparse
import ipaddress
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import monitor_rs as m  # noqa: E402


def tables(n):
    """(/proc text, ipvsadm -Ln text) of n destinations, 10 per TCP service."""
    proc = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]
    listing = proc[:1] + ["Prot LocalAddress:Port Scheduler Flags",
                          "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for s in range(max(1, n // 10)):
        vip = ipaddress.IPv4Address(0x0A000000 + s + 1)
        proc.append(f"TCP  {int(vip):08X}:0050 wrr ")
        listing.append(f"TCP  {vip}:80 wrr")
        for d in range(min(10, n)):
            rip = ipaddress.IPv4Address(0xC0A80000 + s * 16 + d + 1)
            proc.append(f"  -> {int(rip):08X}:0050      Route   {d + 1:<6} 0          0         ")
            listing.append(f"  -> {str(rip) + ':80':<28} Route   {d + 1:<6} 0          0         ")
    return "\n".join(proc) + "\n", "\n".join(listing) + "\n"


def median(fn, budget):
    fn()
    times, spent = [], 0.0
    while spent < budget or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="40,1000,10000")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of reads per figure")
    args = parser.parse_args()
    cat = m.Ipvsadm("/bin/cat", 60)
    print("| destinations | /proc read + parse | ipvsadm -Ln process + parse (whole) | one process per service |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(x) for x in args.n.split(",")):
            proc_text, listing_text = tables(n)
            proc_path, listing_path = os.path.join(folder, "ip_vs"), os.path.join(folder, "listing")
            with open(proc_path, "w") as handle:
                handle.write(proc_text)
            with open(listing_path, "w") as handle:
                handle.write(listing_text)
            assert dict(m.read_proc(proc_path)) == m.parse_listing(listing_text)
            t_proc = median(lambda: m.read_proc(proc_path), args.budget)
            t_whole = median(lambda: m.parse_listing(cat.run((listing_path,)).stdout), args.budget)
            one = os.path.join(folder, "one")
            with open(one, "w") as handle:
                handle.write("\n".join(listing_text.splitlines()[1:14]) + "\n")  # titles + one service of 10
            services = max(1, n // 10)
            t_one = median(lambda: m.parse_listing(cat.run((one,)).stdout), args.budget)
            print(f"| {n} | {t_proc * 1000:.2f} ms | {t_whole * 1000:.2f} ms | "
                  f"{services} × {t_one * 1000:.2f} ms = {services * t_one * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
