"""Every collected test has one tier (tests/conftest.py), so `make test-fast` cannot silently lose or gain one."""

from pathlib import Path

from conftest import SLOW, TESTS, TIERS, tier

TIER_MARKERS = set(TIERS.values())


def test_every_collected_test_has_exactly_one_tier(request):
    for item in request.session.items:
        tiers = {m.name for m in item.iter_markers()} & TIER_MARKERS
        assert len(tiers) == 1, f"{item.nodeid} has tiers {sorted(tiers)}"
        assert tiers == {tier(item.path)}


def test_every_test_file_is_in_a_tier_and_the_slow_ones_exist():
    files = sorted(TESTS.rglob("test_*.py"))
    assert files and all(tier(f) in TIER_MARKERS for f in files), [str(f) for f in files if tier(f) is None]
    for rel, name in SLOW:  # a renamed slow test would otherwise turn fast unnoticed
        assert f"def {name}(" in (TESTS / rel).read_text(), f"{rel}::{name} is gone; update SLOW in tests/conftest.py"
    assert tier(TESTS / "conftest.py") is None and tier(Path("/elsewhere/test_x.py")) is None
