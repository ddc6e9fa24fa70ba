"""``torch.compile(fullgraph=True)`` traces medeff's 3D models on CPU without a graph break, in eval and in training.

The CPU paths are the ones a compiler meets first: the fused batch norm + SiLU and the depthwise convolution as
autograd functions, channels-last layout changes, the MBConv recompute (which runs its function as it is under a
compiler) and the polyphase decoder (which gives the compiler the plain upsample-and-convolve graph, even when
asked for). The ``eager`` backend runs dynamo's tracing without generating code, so the test needs no C++
compiler; a graph break fails it. The CUDA variant is ``tests/benchmarks/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from medeff.models import create_model
from medeff.models.decoder import DecoderBlock


def _set_polyphase(model: torch.nn.Module, value: bool) -> None:
    for module in model.modules():
        if isinstance(module, DecoderBlock):
            module.polyphase = value


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_compile_fullgraph_on_cpu_matches_eager(task):
    torch.compiler.reset()
    torch.manual_seed(0)
    kwargs = {"task": task, "decoder_polyphase": True} if task == "segmentation" else {}
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, **kwargs)
    x = torch.randn(2, 1, 32, 32, 32)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def step(compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.load_state_dict(initial)  # same running statistics before each pass
        model.zero_grad(set_to_none=True)
        _set_polyphase(model, compiled)  # the eager reference runs the plain decoder the compiler must get
        run = torch.compile(model, fullgraph=True, backend="eager") if compiled else model
        model.eval()
        with torch.no_grad():
            out = run(x)
        model.train()
        torch.manual_seed(1)  # same stochastic-depth draws
        run(x).float().square().mean().backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    out, grads = step(compiled=False)
    compiled_out, compiled_grads = step(compiled=True)
    torch.testing.assert_close(compiled_out, out)
    for name, grad in compiled_grads.items():
        assert grad is not None, f"{name} got no gradient under torch.compile"
        torch.testing.assert_close(grad, grads[name], msg=name)
