"""Evaluation tests: ``@pytest.mark.slow`` variants are deselected unless a ``-m`` expression is given."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return
    keep, drop = [], []
    for item in items:
        (drop if ("slow" in item.keywords and "tests/evaluation" in str(item.fspath)) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
