"""Writes, into the directory given as the only argument, what test_jit.cpp checks in C++:
a scripted model (``model.pt``, ``torch.jit.save``), its weights (``weights.safetensors``, with
``torch_safetensors.save_model``), an input and the model's output on it (``io.safetensors``).

Fails (exit status 1, reason on stderr) when torch_safetensors cannot be imported: the C++ test
must then fail, not skip.
"""

import sys

import torch

try:
    import torch_safetensors
except ImportError as error:
    sys.exit(
        f"make_jit_model.py: cannot import torch_safetensors ({error}); build the package first "
        "(scripts/python.sh, or an in-place build_ext with PYTHONPATH set to the checkout)"
    )


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def main(out_dir: str) -> None:
    torch.manual_seed(1234)
    model = Net()
    with torch.no_grad():  # buffers that differ from their initial values must travel too
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2.0)
    model.eval()
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, f"{out_dir}/model.pt")
    torch_safetensors.save_model(scripted, f"{out_dir}/weights.safetensors")
    x = torch.randn(5, 6)
    with torch.no_grad():
        y = scripted(x)
    torch_safetensors.save_file({"input": x, "output": y}, f"{out_dir}/io.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
