"""models.scan_layout: unrolled <-> scanned parameter trees, against the scanned HF load."""

import os

import pytest
from test_hf import assert_trees_equal

from r1jax.models import hf, scan_layout

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")


@pytest.mark.parametrize("name", ["deepseek_v3", "llama"])
def test_conversions_match_the_scanned_load(name):
    """A MoE model (dense prefix + MoE stack) and a dense one (one stack)."""
    path = os.path.join(FIXTURES, name)
    config, unrolled = hf.load_hf(path)
    _, scanned = hf.load_hf(path, scan_layers=True)
    converted = scan_layout.to_scanned(config, unrolled)
    assert scan_layout.is_scanned(converted) and not scan_layout.is_scanned(unrolled)
    assert_trees_equal(converted, scanned)
    assert_trees_equal(scan_layout.to_unrolled(config, scanned), unrolled)
    assert scan_layout.to_scanned(config, scanned) is scanned  # already scanned: unchanged
    assert scan_layout.to_unrolled(config, unrolled) is unrolled

