"""``medeff predict`` slides its window with the padding the checkpoint was trained with (``task.sw_pad``)."""

from __future__ import annotations

import pytest

from medeff.engine.predict_segment import Segmenter
from medeff.errors import ConfigError
from . import predict_fakes


@pytest.mark.parametrize("value, expected", [(None, "min"), ("replicate", "replicate"), (0, 0.0), (-1.5, -1.5)])
def test_segmenter_takes_sw_pad_from_the_checkpoint(value, expected):
    meta = predict_fakes.meta()
    if value is not None:
        meta["config"]["task"]["sw_pad"] = value
    seg = Segmenter(predict_fakes.Echo().eval(), meta, "cpu", {})
    assert seg.sw["pad"] == expected


def test_segmenter_refuses_a_bad_sw_pad_before_any_inference():
    meta = predict_fakes.meta()
    meta["config"]["task"]["sw_pad"] = "mirror"
    with pytest.raises(ConfigError, match="sw_pad"):
        Segmenter(predict_fakes.Echo().eval(), meta, "cpu", {})
