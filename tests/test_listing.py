"""The parser of `ipvsadm -Ln`: golden text as ipvsadm 1.31 prints it (IPVSADM.md)."""

import ipaddress

import pytest

import monitor_rs as m
from golden import REFERENCE_LISTING

FULL = REFERENCE_LISTING


def ep(text):
    return m.parse_address(text)


def test_full_listing():
    services = m.parse_listing(FULL)
    assert set(services) == {("TCP", "10.0.0.1:80"), ("TCP", "10.0.0.1:8080"), ("UDP", "10.0.0.1:53"),
                             ("SCTP", "10.0.0.1:9999"), ("FWM", "100")}
    web = services[("TCP", "10.0.0.1:80")]
    assert web[ep("192.168.1.10:80")] == m.Destination(ep("192.168.1.10:80"), "Route", 1, 12, 345)
    assert web[ep("192.168.1.12:8080")].weight == 0
    assert web[ep("192.168.1.12:8080")].forward == "Masq"
    assert services[("TCP", "10.0.0.1:8080")] == {}
    assert list(services[("FWM", "100")]) == [ep("192.168.1.30:0")]


def test_destination_is_found_only_in_its_own_service():
    """The original's grep found 10.0.0.1:80 in 10.0.0.1:8080 and in other services."""
    services = m.parse_listing(FULL)
    assert ep("192.168.1.10:80") not in services[("TCP", "10.0.0.1:8080")]
    assert ep("192.168.1.1:80") not in services[("TCP", "10.0.0.1:80")]


def test_single_service_listing_has_no_version_line():
    text = ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  10.0.0.1:80 wrr\n"
            "  -> 192.168.1.10:80              Route   3      0          0         \n")
    assert m.parse_listing(text) == {("TCP", "10.0.0.1:80"): {
        ep("192.168.1.10:80"): m.Destination(ep("192.168.1.10:80"), "Route", 3, 0, 0)}}


def test_ipv6_and_wide_weights():
    text = ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  [2001:db8::10]:443 wlc\n"
            "  -> [2001:db8::1]:443            Masq    2147483647 4294967295 0         \n"
            "  -> [::1]:8443                   Masq    0      0          0         \n")
    table = m.parse_listing(text)[("TCP", "[2001:db8::10]:443")]
    d = table[m.Endpoint(ipaddress.ip_address("2001:db8::1"), 443)]
    assert (d.weight, d.active) == (2147483647, 4294967295)
    assert m.Endpoint(ipaddress.ip_address("::1"), 8443) in table


def test_service_key_matches_the_config():
    vs = m.VirtualService("v6", "tcp", ipaddress.ip_address("2001:0db8:0::10"), 443, 0, (), "-m")
    assert vs.ipvs_key == ("TCP", "[2001:db8::10]:443")
    assert vs.service_args == ("-t", "[2001:db8::10]:443")


@pytest.mark.parametrize("text", [
    "",  # nothing at all
    "Prot LocalAddress:Port Scheduler Flags\n",  # truncated after the first title
    FULL.replace("  -> 192.168.1.10:80              Route   1      12         345       \n",
                 "  -> 192.168.1.10:80              Route   1\n"),  # cut mid-line
    "Segmentation fault\n",
    FULL + "  -> not-an-address:80   Route 1 0 0\n",
    FULL.replace("Route   1      12", "Route   x      12"),
])
def test_garbled_listings_are_refused_not_read_as_empty(text):
    with pytest.raises(m.IpvsError):
        m.parse_listing(text)


def test_destination_before_any_service_is_refused():
    text = ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "  -> 192.168.1.10:80              Route   1      0          0         \n")
    with pytest.raises(m.IpvsError):
        m.parse_listing(text)


@pytest.mark.parametrize("printed, mark", [("-1", 4294967295), ("-2147483648", 2147483648), ("2147483647", 2147483647)])
def test_a_firewall_mark_from_2_31_up_is_printed_signed_and_read_unsigned(printed, mark):
    """ipvsadm 1.31 prints the mark with %d (seen in the VM: 4294967295 as ``FWM  -1``); the
    config names it unsigned, so the service must be found under the unsigned number."""
    text = ("Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            f"FWM  {printed} wrr\n  -> 10.0.0.2:80                  Route   1      0          0\n")
    assert list(m.parse_listing(text)) == [("FWM", str(mark))]


@pytest.mark.parametrize("printed", ["-2147483649", "4294967296", "1x"])
def test_a_firewall_mark_out_of_32_bits_is_unreadable(printed):
    text = ("Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            f"FWM  {printed} wrr\n")
    with pytest.raises(m.IpvsError):
        m.parse_listing(text)
