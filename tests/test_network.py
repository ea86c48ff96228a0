"""bench.network: validation, tc JSON parsing, counters. No root needed."""

from __future__ import annotations

import pytest

from bench import network as N


@pytest.mark.parametrize("text, bits", [("100mbit", 10**8), ("1gbit", 10**9), ("10Mbit", 10**7),
                                        ("2.5mbit", 2_500_000), ("500kbit", 500_000), ("1mbps", 8 * 10**6)])
def test_parse_rate(text, bits):
    assert N.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["100", "fast", "0mbit", "1kbit", "1000gbit", "-5mbit", "100 mbit x", "1e9bit", ""])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError) as err:
        N.parse_rate(text)
    assert "\n" not in str(err.value)


def test_format_rate():
    assert [N.format_rate(r) for r in (10**7, 10**9, 2_500_000, 64_000)] == ["10mbit", "1gbit", "2.5mbit", "64kbit"]


def test_sizes_times_percent():
    assert N.parse_size("32kb") == 32768 and N.parse_size("1mb") == 1 << 20 and N.parse_size("65536") == 65536
    for bad in ("1b", "32 kb", "100mb", "x"):
        with pytest.raises(ValueError):
            N.parse_size(bad)
    assert N.parse_time_us("2ms") == 2000 and N.parse_time_us("0.5ms") == 500 and N.parse_time_us("1s") == 1e6
    for bad in ("2", "2min", "-1ms", "100s"):
        with pytest.raises(ValueError):
            N.parse_time_us(bad)
    assert N.parse_percent("0.1%") == 0.1 and N.parse_percent("5") == 5
    for bad in ("101%", "-1%", "x%"):
        with pytest.raises(ValueError):
            N.parse_percent(bad)


@pytest.mark.parametrize("name", ["eth0", "detrv12", "enp3s0.100", "a"])
def test_iface_ok(name):
    assert N.validate_iface(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, "eth 0", "../x", "-eth0", "eth0;rm", "a/b", ".", None])
def test_iface_rejects(name):
    with pytest.raises(ValueError):
        N.validate_iface(name)


def test_cluster_names_hosts_quotas():
    assert N.validate_cluster_name("detr") == "detr"
    for bad in ("Detr", "d-x", "toolongname", "1abc", ""):
        with pytest.raises(ValueError):
            N.validate_cluster_name(bad)
    assert N.validate_hosts("4") == 4
    for bad in ("0", "65", "x", "-1", "2.5"):
        with pytest.raises(ValueError):
            N.validate_hosts(bad)
    assert N.parse_quota("0.45", cores=2) == 0.45
    for bad in ("0", "-1", "abc", "3", "nan", "inf", "0.001"):
        with pytest.raises(ValueError):
            N.parse_quota(bad, cores=2)
    assert N.parse_quotas("0.5,0.25", 2, cores=2) == [0.5, 0.25]
    with pytest.raises(ValueError):
        N.parse_quotas("0.5,0.25,0.1", 2, cores=2)


def test_summarize_tbf_and_netem_json():
    # Real `tc -j qdisc show` output: tbf rates are bytes/s; netem times in s, loss a fraction.
    tbf = [{"kind": "tbf", "handle": "1:", "root": True, "refcnt": 2,
            "options": {"rate": 12500000, "burst": 32762, "lat": 81265}}]
    got = N.summarize_qdiscs(tbf)
    assert got["rate_bit"] == 100_000_000 and got["burst"] == 32762 and got["delay_us"] is None
    netem = [{"kind": "netem", "handle": "1:", "root": True, "refcnt": 2,
              "options": {"limit": 100000, "delay": {"delay": 0.002, "jitter": 0.0005, "correlation": 0},
                          "loss-random": {"loss": 0.001, "correlation": 0}, "ecn": False, "gap": 0}},
             {"kind": "tbf", "handle": "10:", "parent": "1:1", "options": {"rate": 1250000, "burst": 32768}}]
    got = N.summarize_qdiscs(netem)
    assert got["qdiscs"] == ["netem", "tbf"] and got["rate_bit"] == 10_000_000
    assert got["delay_us"] == pytest.approx(2000) and got["jitter_us"] == pytest.approx(500)
    assert got["loss_pct"] == pytest.approx(0.1)
    assert N.summarize_qdiscs([{"kind": "noqueue", "options": {}}])["rate_bit"] is None


def test_counters_and_wire_iface(monkeypatch):
    tx, rx = N.read_tx_rx("lo")
    assert tx >= 0 and rx >= 0
    with pytest.raises(LookupError):
        N.read_tx_rx("nosuchif0")
    monkeypatch.delenv("DETR_IFACE", raising=False)
    assert N.wire_iface() is None and N.describe_network() is None
    monkeypatch.setenv("DETR_IFACE", "lo")
    assert N.wire_iface() == "lo"
    monkeypatch.setenv("DETR_IFACE", "bad name")
    assert N.wire_iface() is None


def test_describe_loopback():
    got = N.describe_network("lo")
    if got is None:
        pytest.skip("tc not available")
    assert got["iface"] == "lo" and "rate_bit" in got and "netem_available" in got
    assert N.describe_network("nosuchif0") is None


def test_queue_limits_short_at_the_host_deep_at_the_switch():
    burst = 32768
    assert N.host_queue_limit(10_000_000, burst) == burst + 16384          # one GSO packet at least
    assert N.host_queue_limit(50_000_000, burst) == burst + 62500          # 10 ms at the rate
    assert N.host_queue_limit(1_000_000_000, burst) == burst + 65536       # at most 64 KiB
    assert N.switch_queue_limit(10_000_000, burst) == (1 << 20) + burst    # 100 ms, at least 1 MiB
    assert N.switch_queue_limit(1_000_000_000, burst) == 12_500_000 + burst
