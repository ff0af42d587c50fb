"""Golden text: the full `ipvsadm -Ln` listing of IPVSADM.md, byte for byte
(trailing spaces included), shared by the parser's and the fake's tests."""

REFERENCE_LISTING = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    "TCP  10.0.0.1:80 wrr\n"
    "  -> 192.168.1.10:80              Route   1      12         345       \n"
    "  -> 192.168.1.12:8080            Masq    0      0          0         \n"
    "TCP  10.0.0.1:8080 rr persistent 360\n"
    "UDP  10.0.0.1:53 wlc persistent 600 mask 255.255.255.0\n"
    "SCTP 10.0.0.1:9999 rr\n"
    "FWM  100 sh (sh-fallback,sh-port)\n"
    "  -> 192.168.1.30:0               Route   7      0          0         \n"
)
