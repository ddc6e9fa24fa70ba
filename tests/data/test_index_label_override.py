"""``labels={liver:1}`` is a plain Hydra override of the index config (no ``++`` needed)."""

from __future__ import annotations

import pytest

from medeff.config import compose
from medeff.data import index_config


@pytest.mark.parametrize("override", ["labels={liver:1}", "++labels={liver:1}", "+labels.liver=1"])
def test_labels_override_forms_compose(override):
    cfg = compose("index", [override, "folds.k=2"])
    assert dict(cfg.labels) == {"liver": 1}


def test_labels_default_is_declared_and_empty():
    cfg = compose("index", [])
    assert "labels" in cfg and not cfg.labels  # declared (so a plain override may set it), null by default
    cfg = index_config(["labels={liver: 1, spleen: 2}"])
    assert dict(cfg.labels) == {"liver": 1, "spleen": 2}
