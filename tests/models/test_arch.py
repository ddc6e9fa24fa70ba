"""Block specs, compound scaling and the anisotropic stride planner (pure functions)."""

from __future__ import annotations

import math

import pytest

from medeff.models import (
    ARCH_DEFS,
    B_VARIANTS,
    BlockSpec,
    flops_growth_per_phi,
    make_divisible,
    parse_block,
    plan_levels,
    round_channels,
    round_repeats,
    scaling_from_phi,
)


def test_parse_block_string():
    spec = parse_block("mb_r2_k3_s2_e6_c24_se0.25")
    assert spec == BlockSpec("mb", 2, (3,), (2,), 6.0, 24, 0.25, True)
    aniso = parse_block("fmb_r1_k1x3x3_s1x2x2_e4_c48_noskip")
    assert aniso.kernel == (1, 3, 3) and aniso.stride == (1, 2, 2) and aniso.skip is False and aniso.downsamples


def test_parse_block_dict_equals_string():
    d = {"type": "mb", "repeats": 2, "kernel": 3, "stride": 2, "expansion": 6, "out_channels": 24, "se_ratio": 0.25}
    assert parse_block(d) == parse_block("mb_r2_k3_s2_e6_c24_se0.25")


def test_block_spec_is_frozen():
    spec = parse_block("ds_r1_k3_s1_e1_c16")
    with pytest.raises(AttributeError):
        spec.repeats = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("mb_r2_q3_c24", "q3"),
        ("mb_r2_kx_c24", "kx"),
        ("zz_r2_k3_c24", "zz"),
        ("mb_r2_k3_s2_e6_c24_se0.25_foo", "foo"),
        ("mb_r2_r3_c24", "r3"),
    ],
)
def test_bad_block_string_names_token(text, token):
    with pytest.raises(ValueError) as exc:
        parse_block(text)
    msg = str(exc.value)
    assert repr(token) in msg
    if token not in ("zz", "r3", "kx"):
        assert "valid keys" in msg and "se" in msg


def test_bad_block_dict_names_key_and_missing_fields():
    with pytest.raises(ValueError, match=r"'kernal'.*valid keys: type, repeats"):
        parse_block({"type": "mb", "repeats": 1, "kernal": 3, "out_channels": 8})
    with pytest.raises(ValueError, match="out_channels"):
        parse_block("mb_r1_k3")
    with pytest.raises(ValueError, match="se_ratio"):
        parse_block("mb_r1_c8_se1.5")


def test_arch_defs_have_five_levels():
    for arch in ARCH_DEFS.values():
        assert arch.num_levels == 5


def test_rounding():
    assert make_divisible(35.2) == 32  # nearest multiple of 8
    assert make_divisible(12.0) == 16  # rounding down to 8 would lose > 10%
    assert make_divisible(3.0) == 8  # never below the divisor
    assert round_channels(40, 1.1) == 48 and round_channels(320, 2.0) == 640 and round_channels(16, 1.0) == 16
    assert round_channels(32, 1.1, round_limit=0.0) == 32
    assert round_repeats(3, 1.1) == 4 and round_repeats(1, 3.1) == 4 and round_repeats(2, 1.0) == 2


def test_scaling_from_phi():
    s0 = scaling_from_phi(0)
    assert (s0.width, s0.depth, s0.resolution, s0.dropout) == (1.0, 1.0, 224, 0.2)
    s = scaling_from_phi(2.5)
    assert math.isclose(s.width, 1.1**2.5) and math.isclose(s.depth, 1.2**2.5)
    assert s.resolution % 8 == 0 and abs(s.resolution - 224 * 1.15**2.5) <= 4
    assert B_VARIANTS["b4"].width == 1.4 and B_VARIANTS["b7"].resolution == 600
    with pytest.raises(ValueError):
        scaling_from_phi(-1)


def test_flops_growth_counts_resolution_per_axis():
    assert math.isclose(flops_growth_per_phi(2), 1.2 * 1.1**2 * 1.15**2)
    assert math.isclose(flops_growth_per_phi(3), 1.2 * 1.1**2 * 1.15**3)
    assert flops_growth_per_phi(3) / flops_growth_per_phi(2) == pytest.approx(1.15)
    assert 1.9 < flops_growth_per_phi(2) < 2.0 < flops_growth_per_phi(3)


def test_plan_levels_thick_slices():
    strides, kernels = plan_levels((5.0, 0.7, 0.7))
    assert strides == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert kernels == [(1, None, None), None, None, None, None]


def test_plan_levels_isotropic_and_mild():
    strides, kernels = plan_levels((1.0, 1.0, 1.0))
    assert strides == [(2, 2, 2)] * 5 and kernels == [None] * 5
    strides, _ = plan_levels((1.5, 1.0, 1.0))  # < 2x coarser: pooled from the start
    assert strides[0] == (2, 2, 2)
    strides, kernels = plan_levels((3.0, 0.75, 0.75))  # 4x: two levels in-plane only
    assert strides[:3] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert kernels[0] == (1, None, None) and kernels[1] is None
    with pytest.raises(ValueError):
        plan_levels((0.0, 1.0, 1.0))
