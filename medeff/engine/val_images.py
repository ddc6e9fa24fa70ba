"""Pictures of a few validation cases in TensorBoard / MLflow during training (``callbacks.val_images``).

:class:`ValidationImages` takes the first ``n_cases`` cases of the validation loader (the same cases every epoch: the
loader does not shuffle) and, at the end of validation, logs for each one panel: the middle slice along the last
axis (axial after the RAS reorientation) of the image, of the reference and of the prediction (argmax of the
sliding-window output), labels drawn in colour over the grey image, side by side. 2D cases are shown whole.

* TensorBoard loggers (``logger=tensorboard``): ``add_image`` under ``val_images/case<i>`` at the global step, so
  TensorBoard's slider walks through the epochs.
* MLflow (``logger=mlflow``): a PNG artifact ``val_images/epoch<NNN>_case<i>.png`` of the run.
* Other loggers (``csv``) get nothing: TensorBoard or MLflow is needed to see the pictures.

Segmentation and joint tasks only. The prediction is computed again for these cases (one extra sliding window per
case shown), so keep ``n_cases`` small; 0 (the default) turns the callback off. Only rank 0 logs; the sanity check
before training logs nothing. Cases are named by their position in the validation loader, never by case id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from medeff.errors import ConfigError

__all__ = ["ValidationImages", "panel", "PALETTE"]

#: colours (RGB) of labels 1, 2, ...; repeated beyond its length
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.float32)


def _middle(x: np.ndarray) -> np.ndarray:
    """The middle slice along the last axis of a ``(*spatial)`` array (3D), or the array itself (2D)."""
    return x[..., x.shape[-1] // 2] if x.ndim == 3 else x


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    g = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) * 255.0
    return np.repeat(g[..., None], 3, axis=-1).astype(np.float32)


def _overlay(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = grey.copy()
    fg = labels > 0
    if fg.any():
        colours = PALETTE[(labels[fg].astype(np.int64) - 1) % len(PALETTE)]
        out[fg] = (1 - alpha) * out[fg] + alpha * colours
    return out


def panel(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """One picture (``H x 3W x 3`` uint8): image, reference over image, prediction over image (middle slices).

    Args:
        image: ``(*spatial)`` first image channel.
        reference, prediction: ``(*spatial)`` label maps.
    """
    img, ref, pred = (np.rot90(_middle(np.asarray(a, dtype=np.float32))) for a in (image, reference, prediction))
    grey = _grey(img)
    gap = np.full((grey.shape[0], 2, 3), 255.0, dtype=np.float32)
    row = np.concatenate([grey, gap, _overlay(grey, ref), gap, _overlay(grey, pred)], axis=1)
    return np.ascontiguousarray(np.clip(row, 0, 255).astype(np.uint8))


class ValidationImages(Callback):
    """Log image / reference / prediction panels of the first ``n_cases`` validation cases.

    Args:
        n_cases: how many validation cases to show (0: off).
        every_n_epochs: log at the end of every n-th validation epoch.
    """

    def __init__(self, n_cases: int = 0, every_n_epochs: int = 1) -> None:
        super().__init__()
        n, every = int(n_cases), int(every_n_epochs)
        if n < 0 or every < 1:
            raise ConfigError(f"callbacks.val_images: n_cases must be >= 0 and every_n_epochs >= 1, got {n_cases} "
                              f"and {every_n_epochs}.", hint="e.g. callbacks.val_images.n_cases=4 (0 turns it off).")
        self.n_cases, self.every_n_epochs = n, every
        self._panels: list[np.ndarray] = []

    def _active(self, trainer, pl_module) -> bool:
        return (self.n_cases > 0 and not trainer.sanity_checking and trainer.is_global_zero
                and trainer.current_epoch % self.every_n_epochs == 0
                and getattr(pl_module, "kind", None) in ("segmentation", "joint"))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._panels = []

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0 or len(self._panels) >= self.n_cases or not self._active(trainer, pl_module):
            return
        from medeff.engine.inference import first_output, sliding_window

        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        with torch.no_grad():
            out = sliding_window(pl_module.net, image, roi_size=pl_module.roi_size,
                                 joint=pl_module.kind == "joint", **pl_module.sw)
        seg = out[0] if pl_module.kind == "joint" else first_output(out)
        pred = seg.argmax(dim=1).cpu().numpy()
        label = batch["label"]
        label = (label.as_tensor() if hasattr(label, "as_tensor") else label).detach().cpu().numpy()
        img = image.detach().float().cpu().numpy()
        for b in range(img.shape[0]):
            if len(self._panels) >= self.n_cases:
                break
            self._panels.append(panel(img[b, 0], label[b, 0] if label.ndim == img.ndim else label[b], pred[b]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._panels or not self._active(trainer, pl_module):
            return
        panels, self._panels = self._panels, []
        log_panels(trainer, panels)


def log_panels(trainer, panels: list[np.ndarray]) -> None:
    """Send the panels to every TensorBoard and MLflow logger of ``trainer``."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    for logger in trainer.loggers:
        for i, pic in enumerate(panels):
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"val_images/case{i}", pic, global_step=trainer.global_step,
                                            dataformats="HWC")
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_image(logger.run_id, pic,
                                            artifact_file=f"val_images/epoch{trainer.current_epoch:03d}_case{i}.png")
