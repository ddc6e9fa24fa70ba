"""Validation of fixed (untrained) classification and segmentation tasks on 1 process or 2 gloo DDP ranks.

Run as a script (``python ddp_validation.py OUT_DIR DEVICES``) it writes ``OUT_DIR/<task>_rank<R>.json`` with the
metrics Lightning logged on rank R. Both validation sets have an odd number of items, so Lightning's
``DistributedSampler`` repeats item 0 on rank 1; the data are built so that counting it twice changes the metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

# (case, row, label, logit of the positive class): case A's mean probability is 0.51 (below positive case B's
# 0.60); with item 0 counted twice it would be 0.66 (above B's), so the AUC would change
CLASSIFICATION_ITEMS = [("A", 0, 0, 3.0), ("A", 1, 0, -2.5), ("B", 0, 1, 0.4), ("C", 0, 0, -1.0),
                        ("D", 0, 1, 1.0), ("E", 0, 0, -2.0), ("F", 0, 1, 2.0), ("G", 0, 1, -0.5),
                        ("H", 0, 0, -0.2)]
SEG_SIZE = 6


def classification_loader() -> DataLoader:
    items = [{"image": torch.full((1, 4, 4), v), "label": label, "case_id": case, "row": row}
             for case, row, label, v in CLASSIFICATION_ITEMS]
    return DataLoader(items, batch_size=2, shuffle=False)


def classification_task():
    from medeff.engine.tasks import ClassificationTask

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():  # logits [0, mean pixel value]
        net[1].weight.zero_()
        net[1].weight[1].fill_(1.0 / 16)
        net[1].bias.zero_()
    return ClassificationTask(net, num_classes=2)


def segmentation_loader() -> DataLoader:
    """Five volumes: the prediction is where the image is positive; case 0 is segmented perfectly (Dice 1),
    the others partly, so counting case 0 twice raises the mean Dice."""
    items = []
    for i in range(5):
        label = torch.zeros(1, SEG_SIZE, SEG_SIZE, SEG_SIZE)
        label[:, 1:5, 1:5, 1:5] = 1
        image = -torch.ones(1, SEG_SIZE, SEG_SIZE, SEG_SIZE)
        image[:, 1:5, 1:5, 1 + i // 2:5] = 1  # predicted region shrinks with i
        if i % 2:
            image[:, 0, 0, 0] = 1  # and has a false positive on odd cases
        items.append({"image": image, "label": label, "case_id": f"ct{i}"})
    return DataLoader(items, batch_size=1, shuffle=False)


def segmentation_task():
    from medeff.engine.tasks import SegmentationTask

    net = nn.Conv3d(1, 2, 1)
    with torch.no_grad():  # logits [0, image]
        net.weight.zero_()
        net.weight[1].fill_(1.0)
        net.bias.zero_()
    return SegmentationTask(net, num_classes=2, label_names=["background", "organ"], roi_size=[SEG_SIZE] * 3,
                            sw_batch_size=1)


def validate(devices: int, out_dir: Path) -> None:
    import lightning as L

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, task, loader in (("classification", classification_task(), classification_loader()),
                               ("segmentation", segmentation_task(), segmentation_loader())):
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)
        trainer.validate(task, dataloaders=loader, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out_dir / f"{name}_rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    torch.set_num_threads(1)
    validate(int(sys.argv[2]), Path(sys.argv[1]))
