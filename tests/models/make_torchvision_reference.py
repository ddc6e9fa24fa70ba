"""Write ``data/torchvision_reference.json``: what torchvision's own EfficientNet classes compute for the weights
of :func:`torchvision_ref.torchvision_reference`, so the tests can check that reference without torchvision.

Run with torchvision's Python sources importable, e.g. from its wheel (the compiled ops are not needed for these
models, so their registrations are stubbed when they cannot load)::

    pip download --no-deps torchvision==0.28.0 -d /tmp/tv && unzip -q /tmp/tv/torchvision-*.whl -d /tmp/tv/site
    PYTHONPATH=/tmp/tv/site:. python tests/models/make_torchvision_reference.py
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from torchvision_ref import layout_digest, reference_input, torchvision_reference  # noqa: E402

NAMES = ("efficientnet_b0", "efficientnet_b3", "efficientnet_v2_s")
OUT = Path(__file__).parent / "data" / "torchvision_reference.json"


def import_torchvision():
    """torchvision, with its compiled-op registrations stubbed when its extension does not load."""
    try:
        import torchvision
    except Exception:  # noqa: BLE001 - e.g. "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        import torchvision
    return torchvision


def main() -> None:
    tv = import_torchvision()
    out = {"torchvision": tv.__version__, "torch": torch.__version__, "models": {}}
    for name in NAMES:
        ours = torchvision_reference(name)
        theirs = getattr(tv.models, name)(num_classes=10).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        with torch.no_grad():
            logits = theirs.double()(reference_input())
        out["models"][name] = {"layout_sha256": layout_digest(theirs), "logits": logits.tolist()}
        print(name, layout_digest(theirs) == layout_digest(ours))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
