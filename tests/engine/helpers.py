"""Helpers shared by the engine tests (importable, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

# real medeff.models.create_model nets, kept small so that a training step takes a fraction of a second
SMALL_NET = ["+model.width=0.25", "+model.depth=0.34"]


def fast_overrides(run_dir: Path, *, small_net: bool = True) -> list[str]:
    """Shrink a training config to seconds on CPU."""
    return (SMALL_NET if small_net else []) + [
        "debug=fast", f"run_dir={run_dir}", "trainer.accelerator=cpu", "+trainer.enable_model_summary=false",
        "trainer.gradient_clip_val=null"]
