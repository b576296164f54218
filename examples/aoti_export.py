"""Exports a small model, packages it with AOTInductor without its weights, and saves the weights
with torch_safetensors: the pair examples/aoti_app.cpp runs from C++ (see docs/aoti.md).

    python3 examples/aoti_export.py OUTDIR

writes OUTDIR/model.pt2 (no weights inside), OUTDIR/model.safetensors (the weights, under the names
the package asks for) and OUTDIR/io.safetensors (an input and eager PyTorch's output for it).
"""
import os
import sys

import torch
from torch_safetensors import aoti, save_file


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 64)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                       torch.nn.Linear(256, 64))
        self.head = torch.nn.Linear(64, 1000, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.full((64,), 0.5))

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.head((h + self.mlp(h)) * self.scale)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    model = Net().eval()
    tokens = torch.randint(0, 1000, (1, 8))
    program = torch.export.export(model, (tokens,))
    # The two lines: a package without its weights, and the weights it will ask for.
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=os.path.join(outdir, "model.pt2"), inductor_configs=aoti.WEIGHTLESS)
    aoti.save_weights(program, os.path.join(outdir, "model.safetensors"), package=package)
    with torch.no_grad():
        save_file({"tokens": tokens, "logits": model(tokens)}, os.path.join(outdir, "io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
