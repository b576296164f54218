"""The adversarial checkpoint corpus (tools/gen_adversarial.py, checkpoint_cases): quantized
checkpoints and DCP layouts, each a folder, each with the error substring it must raise (or OK).
A case that loads must load completely; one that does not must fail with its message, naming
the file, and never crash."""
import os

import pytest

from torch_safetensors import quant
from torch_safetensors.distributed import StorageReader

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "adversarial_checkpoints")


def _cases():
    with open(os.path.join(CORPUS, "MANIFEST.tsv"), encoding="utf-8") as manifest:
        for line in manifest:
            if line.startswith("#") or not line.strip():
                continue
            name, expected = line.rstrip("\n").split("\t")
            yield name, expected


def _load(folder):
    if os.path.basename(folder).startswith("dcp_"):
        StorageReader(folder).read_metadata()
        return
    path = os.path.join(folder, "model.safetensors")
    view = quant.DenseView(path)
    for name in view:  # every dense tensor, dequantized where quantized
        view[name]
    quant.describe(path)


@pytest.mark.parametrize("name,expected", list(_cases()))
def test_case(name, expected):
    folder = os.path.join(CORPUS, name)
    if expected == "OK":
        _load(folder)
        return
    with pytest.raises(Exception) as error:  # SafetensorError (quant), ValueError (DCP)
        _load(folder)
    message = str(error.value)
    assert expected in message, message
    assert ": :" not in message, message
    assert "safetensors" in message or name in message, message
