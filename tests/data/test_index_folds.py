"""Fold properties: patients never split, classes roughly balanced, seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from index_fixtures import write_npz_archive

from medeff.data import build_index
from medeff.data.folds import assign_folds, class_balance, split_groups
from medeff.errors import ConfigError


def _random_groups(seed: int, n: int = 400, n_groups: int = 120, p_pos: float = 0.3):
    r = np.random.default_rng(seed)
    groups = [f"g{int(r.integers(0, n_groups))}" for _ in range(n)]
    classes = [int(r.random() < p_pos) for _ in range(n)]
    return groups, classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_never_split_a_group_and_balance_classes(seed):
    groups, classes = _random_groups(seed)
    folds = assign_folds(groups, classes, k=5, seed=seed)
    assert split_groups(groups, folds) == {}
    assert set(folds) == set(range(5))
    bal = class_balance(classes, folds, 5)
    frac = np.array([b.get(1, 0) / sum(b.values()) for b in bal])
    overall = sum(classes) / len(classes)
    assert np.all(np.abs(frac - overall) < 0.06), (frac, overall)
    sizes = np.array([sum(b.values()) for b in bal])
    assert sizes.max() - sizes.min() <= 0.1 * len(groups)


def test_stratification_beats_unstratified():
    spread = {True: [], False: []}
    for seed in range(5):
        groups, classes = _random_groups(seed, p_pos=0.2)
        for strat in (True, False):
            folds = assign_folds(groups, classes, k=5, seed=seed, stratify=strat)
            bal = class_balance(classes, folds, 5)
            fr = [b.get(1, 0) / sum(b.values()) for b in bal]
            spread[strat].append(max(fr) - min(fr))
    assert np.mean(spread[True]) < np.mean(spread[False])


def test_folds_are_seeded_and_order_independent():
    groups, classes = _random_groups(7)
    a = assign_folds(groups, classes, k=4, seed=3)
    assert a == assign_folds(groups, classes, k=4, seed=3)
    assert a != assign_folds(groups, classes, k=4, seed=4)
    perm = np.random.default_rng(0).permutation(len(groups))
    b = assign_folds([groups[i] for i in perm], [classes[i] for i in perm], k=4, seed=3)
    assert [a[i] for i in perm] == b


def test_bad_k_is_a_config_error():
    with pytest.raises(ConfigError, match="folds.k"):
        assign_folds(["a", "b"], None, k=3)
    with pytest.raises(ConfigError, match="at least 2"):
        assign_folds(["a", "b"], None, k=1)


def test_index_folds_reproducible_and_written(tmp_path, rng, cfg_over):
    folder = write_npz_archive(tmp_path / "arc", rng)
    a = build_index(folder, tmp_path / "a.json", cfg_over("folds.k=4", "folds.seed=11"))
    b = build_index(folder, tmp_path / "b.json", cfg_over("folds.k=4", "folds.seed=11", "pseudonym.salt=other"))
    c = build_index(folder, tmp_path / "c.json", cfg_over("folds.k=4", "folds.seed=12"))
    fa = {x.case_id: x.fold for x in a.all_cases}
    assert fa == {x.case_id: x.fold for x in b.all_cases}  # the salt changes pseudonyms, not folds
    assert fa != {x.case_id: x.fold for x in c.all_cases}
    assert a.num_folds == 4 and a.fold_seed == 11 and a.stratified
    for f in range(4):
        val = {x.case_id for x in a.cases(fold=f, split="val")}
        train = {x.case_id for x in a.cases(fold=f, split="train")}
        assert val and train and not val & train and len(val | train) == len(a.all_cases)
        assert not {x.group for x in a.cases(f, "val")} & {x.group for x in a.cases(f, "train")}
    with pytest.raises(ValueError, match="out of range"):
        a.cases(fold=4)


def test_fold_properties_hold_for_any_grouping():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2)), min_size=5, max_size=120),
           st.integers(2, 5), st.integers(0, 2**16), st.booleans())
    def check(pairs, k, seed, stratify):
        groups = [f"p{g}" for g, _ in pairs]
        classes = [c for _, c in pairs]
        if len(set(groups)) < k:
            with pytest.raises(ConfigError):
                assign_folds(groups, classes, k=k, seed=seed, stratify=stratify)
            return
        folds = assign_folds(groups, classes, k=k, seed=seed, stratify=stratify)
        assert split_groups(groups, folds) == {}
        assert set(folds) == set(range(k))  # no empty fold
        assert folds == assign_folds(groups, classes, k=k, seed=seed, stratify=stratify)

    check()
