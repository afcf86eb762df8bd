"""Unit strings: exact conversions to base units and one-line errors."""

import pytest

from sfsim.units import format_quantity, parse_quantity


@pytest.mark.parametrize("text, kind, expected", [
    ("50 Mbps", "bandwidth", 50e6),
    ("1 Gbps", "bandwidth", 1e9),
    ("10 MB/s", "bandwidth", 80e6),
    ("2 Kibps", "bandwidth", 2048.0),
    (1000, "bandwidth", 1000.0),
    ("20 ms", "time", 0.02),
    ("0.5ms", "time", 0.0005),
    ("3 us", "time", 3e-6),
    ("2 min", "time", 120.0),
    ("2 h 15 min", "time", 8100.0),
    ("1min30s", "time", 90.0),
    ("1 h 0.5 h", "time", 5400.0),
    ("4 GiB", "size", 4 * 2**30),
    ("1.5 GB", "size", 1.5e9),
    ("512", "size", 512.0),
    ("1.3 TFLOPS", "flops", 1.3e12),
    ("40 GFLOP/s", "flops", 40e9),
    (2.5e9, "flops", 2.5e9),
])
def test_parse_quantity(text, kind, expected):
    assert parse_quantity(text, kind) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text, kind", [("50 Mbs", "bandwidth"), ("fast", "time"), (True, "size"),
                                        ("4 GiB", "bandwidth"), ("", "flops"), (None, "time"),
                                        ("2 h 15", "time"), ("2 h -15 min", "time"), ("2 h 15 parsecs", "time"),
                                        ("1 Mbps 2 Mbps", "bandwidth")])
def test_parse_quantity_rejects(text, kind):
    with pytest.raises(ValueError, match="is not a"):
        parse_quantity(text, kind)


def test_format_quantity():
    assert format_quantity(50e6, "bandwidth") == "50 Mbps"
    assert format_quantity(4 * 2**30, "size") == "4 GiB"
    assert format_quantity(0.02, "time") == "20 ms"
    assert format_quantity(1.3e12, "flops") == "1.3 TFLOPS"
