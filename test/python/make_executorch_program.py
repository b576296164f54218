"""Exports a small module to ExecuTorch with its constants external, for the end-to-end tests
(test/cpp/test_executorch_runtime.cpp, test/python/test_executorch.py).

    python3 make_executorch_program.py OUTDIR

writes to OUTDIR:
  model.pte            the program; its weights are named data ("linear.weight", ...), not in it
  reference.ptd        ExecuTorch's own .ptd of the original weights
  original.safetensors the weights it was exported with (what reference.ptd holds)
  weights.safetensors  different weights, under the program's keys (a "fine-tune")
  io.safetensors       x (the input), y (eager PyTorch with the new weights), y_original

Exits 77 when the executorch package (or what its exporter imports) is missing.
"""
import os
import sys

import torch

MISSING = 77


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x):
        return self.out(torch.relu(self.linear(x))) * self.scale


def export(model, example):
    """The program and ExecuTorch's .ptd bytes of its external constants."""
    from executorch.exir import ExecutorchBackendConfig, to_edge

    program = to_edge(torch.export.export(model, example)).to_executorch(
        ExecutorchBackendConfig(external_constants=True))
    (ptd,) = program._tensor_data.values()  # "_default_external_constant"
    return program.buffer, bytes(ptd)


def new_weights(model, seed=1234):
    """Different values of the same shapes, under the program's keys."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(value.shape, generator=generator)
            for name, value in model.state_dict().items()}


def main(outdir):
    try:
        import executorch.exir  # noqa: F401
    except ImportError as error:
        print(f"executorch is not installed: {error}", file=sys.stderr)
        return MISSING
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 4)
    pte, ptd = export(model, (x,))
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "model.pte"), "wb") as f:
        f.write(pte)
    with open(os.path.join(outdir, "reference.ptd"), "wb") as f:
        f.write(ptd)
    save_file(model.state_dict(), os.path.join(outdir, "original.safetensors"))
    with torch.no_grad():
        y_original = model(x)
        weights = new_weights(model)
        model.load_state_dict(weights)
        y = model(x)
    save_file(weights, os.path.join(outdir, "weights.safetensors"))
    save_file({"x": x, "y": y, "y_original": y_original}, os.path.join(outdir, "io.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
