"""Packages a small model with AOTInductor, without its weights, for the end-to-end tests
(test/cpp/test_aoti.cpp, test/python/test_aoti.py).

    python3 make_aoti_package.py OUTDIR

writes to OUTDIR:
  model.pt2                 the package (aot_inductor.package_constants_in_so=False): it asks for
                            embed.weight or head.weight (tied), l1.*, l2.*, norm.*, scale (a buffer)
  weights_a.safetensors     the weights it was exported with, by the reference's save_model (the
                            tied pair stored once, the dropped name in __metadata__)
  weights_b.safetensors     other weights of the same shapes, every name (a "fine-tune")
  io.safetensors            x (the input), y_a and y_b (eager PyTorch with each set)

Exits 77 when AOTInductor cannot compile here (no C++ compiler it can use).
"""
import os
import shutil
import sys

import torch

MISSING = 77
VOCAB, DIM, HIDDEN = 4096, 512, 2048  # about 24 MB of float32 weights


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.l1 = torch.nn.Linear(DIM, HIDDEN)
        self.l2 = torch.nn.Linear(HIDDEN, DIM)
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.linspace(0.5, 1.5, DIM))

    def forward(self, x):
        h = self.embed(x)
        h = h + self.l2(torch.nn.functional.gelu(self.l1(h)))
        return self.head(self.norm(h) * self.scale)


def main(outdir):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        print("no C++ compiler for AOTInductor", file=sys.stderr)
        return MISSING
    from safetensors.torch import save_file, save_model

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randint(0, VOCAB, (2, 5))
    os.makedirs(outdir, exist_ok=True)
    program = torch.export.export(model, (x,))
    torch._inductor.aoti_compile_and_package(
        program, package_path=os.path.join(outdir, "model.pt2"),
        inductor_configs={"aot_inductor.package_constants_in_so": False,
                          "always_keep_tensor_constants": True})
    with torch.no_grad():
        y_a = model(x)
        save_model(model, os.path.join(outdir, "weights_a.safetensors"))
        generator = torch.Generator().manual_seed(1234)
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05 + tensor)
        y_b = model(x)
        state = {name: tensor.contiguous().clone() for name, tensor in model.state_dict().items()}
        save_file(state, os.path.join(outdir, "weights_b.safetensors"))
    save_file({"x": x, "y_a": y_a, "y_b": y_b}, os.path.join(outdir, "io.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
