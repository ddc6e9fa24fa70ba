"""``callbacks=ema``: checkpoints carry the exponential moving average of the weights, and predict uses it."""

from __future__ import annotations

import torch
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.predict import load_model
from medeff.engine.train import train


def test_ema_weights_are_checkpointed_and_used_for_prediction(nodule_index, tmp_path):
    cfg = compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "data.batch_size=8",
                            "callbacks=ema", "callbacks.ema.decay=0.5", "logger=none", "callbacks.lr_monitor=null"]
                  + fast_overrides(tmp_path / "run"))
    result = train(cfg)
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == raw.keys()
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"] == 2
    key = "net.conv_stem.weight"
    assert not torch.equal(ema[key], raw[key])  # the average lags the raw weights
    net, _ = load_model(result["last_checkpoint"])
    assert torch.equal(net.state_dict()["conv_stem.weight"], ema[key])
