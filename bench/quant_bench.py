"""Dequantization throughput on CPU, ours against the peers' published code, in one run.

    python3 bench/quant_bench.py [--rows 4096 --cols 4096 --weights 4 --repeat 3]

Two checkpoints are written to a temporary folder and dequantized to BF16, every weight:
- FP8 block (DeepSeek-V3 layout, 128 x 128 scales): ours (torch_safetensors.quant.DenseView)
  against transformers' `integrations/finegrained_fp8.py::_dequantize_fp8_weight` and
  compressed-tensors' block `dequantize`;
- INT4 group 128: the GPTQ layout read by ours, and the same weights in compressed-tensors'
  pack-quantized layout read by ours and by compressed-tensors' own `unpack_from_int32` +
  `dequantize` (gptqmodel, GPTQ's own package, is not installed here).
- compressed-tensors' mxfp4-pack-quantized, mxfp6-pack-quantized, mxfp8-quantized and
  nvfp4-pack-quantized, written by its own compressors: ours against its `decompress`.
Peers read their tensors with safetensors.safe_open, so every row includes reading the file
(from the page cache). GB/s counts the dense BF16 bytes produced per second: the best of --repeat
rounds, each round running every case once in turn (so that load from other processes, on a
shared machine, falls on all of them alike).
"""

import argparse
import json
import os
import tempfile
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from torch_safetensors import quant


def best_of(repeat, run):
    """A deferred timing: every case is run once per round, round after round (see main), so that
    load from other processes falls on all of them alike; the best round counts."""
    return (repeat, run)


def mx_cases(folder, names, args, report):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    formats = [("mxfp4-pack-quantized", 4, 32, 6.0), ("mxfp6-pack-quantized", 6, 32, 7.5),
               ("mxfp8-quantized", 8, 32, 448.0), ("nvfp4-pack-quantized", 4, 16, 6.0)]
    for fmt, bits, group, largest in formats:
        weights = dict(num_bits=bits, type="float", strategy="group", group_size=group)
        if fmt == "nvfp4-pack-quantized":
            weights["strategy"] = "tensor_group"
        else:
            weights["scale_dtype"] = torch.uint8
        qargs = QuantizationArgs(**weights)
        scheme = QuantizationScheme(targets=["Linear"], weights=qargs)
        compressor = BaseCompressor.get_value_from_registry(fmt)
        directory = os.path.join(folder, fmt)
        os.makedirs(directory)
        tensors, modules = {}, []
        for name in names:
            w = torch.randn(args.rows, args.cols)
            amax = w.view(args.rows, -1, group).abs().amax(-1)
            state = {"weight": w}
            if fmt == "nvfp4-pack-quantized":
                global_scale = torch.tensor([448.0 * 6.0 / w.abs().max().item()])
                # E4M3-representable scales, passed as float32: compressed-tensors 0.20 divides
                # them by the global scale before storing them as E4M3.
                state["weight_scale"] = (amax / 6.0 * global_scale).to(torch.float8_e4m3fn).float()
                state["weight_global_scale"] = global_scale
            else:
                state["weight_scale"] = 2.0 ** torch.ceil(torch.log2(amax / largest))
            stored = compressor.compress(state, scheme)
            prefix = name[: -len("weight")]
            tensors.update({prefix + k: v.contiguous() for k, v in stored.items()})
            modules.append((prefix, list(stored)))
        save_file(tensors, os.path.join(directory, "model.safetensors"))
        del tensors
        config_weights = {k: v for k, v in weights.items() if k != "scale_dtype"}
        with open(os.path.join(directory, "config.json"), "w") as config:
            json.dump({"quantization_config": {
                "quant_method": "compressed-tensors", "format": fmt,
                "config_groups": {"group_0": {"targets": ["Linear"],
                                              "weights": config_weights}}}}, config)

        def ours(directory=directory):
            view = quant.DenseView(directory, torch.bfloat16)
            for name in names:
                view[name]

        def theirs(directory=directory, compressor=compressor, scheme=scheme, modules=modules):
            with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
                for prefix, keys in modules:
                    compressor.decompress({k: f.get_tensor(prefix + k) for k in keys}, scheme)

        report(fmt, "torch_safetensors.quant", best_of(args.repeat, ours))
        report(fmt, "compressed-tensors decompress", best_of(args.repeat, theirs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--weights", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(args.weights)]
    dense_bytes = args.weights * args.rows * args.cols * 2
    results = []

    cases = []

    def report(case, who, timing):
        cases.append((case, who, timing[1]))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.weights} x [{args.rows}, {args.cols}] -> BF16 ({dense_bytes / 1e6:.0f} MB)")
    with tempfile.TemporaryDirectory() as folder:
        # FP8 block checkpoint.
        fp8_dir = os.path.join(folder, "fp8")
        os.makedirs(fp8_dir)
        tensors = {}
        for name in names:
            q = quant.quantize(torch.randn(args.rows, args.cols), "fp8", name=name,
                               block_size=[128, 128])
            tensors.update(q.tensors)
        save_file(tensors, os.path.join(fp8_dir, "model.safetensors"))
        with open(os.path.join(fp8_dir, "config.json"), "w") as config:
            json.dump({"quantization_config": {"quant_method": "fp8",
                                               "weight_block_size": [128, 128]}}, config)
        del tensors

        def ours_fp8():
            view = quant.DenseView(fp8_dir, torch.bfloat16)
            for name in names:
                view[name]

        report("fp8 block 128x128", "torch_safetensors.quant", best_of(args.repeat, ours_fp8))
        try:
            from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

            def transformers_fp8():
                with safe_open(os.path.join(fp8_dir, "model.safetensors"), "pt") as f:
                    for name in names:
                        _dequantize_fp8_weight(f.get_tensor(name), f.get_tensor(name + "_scale_inv"),
                                               [128, 128], torch.bfloat16)

            report("fp8 block 128x128", "transformers _dequantize_fp8_weight",
                   best_of(args.repeat, transformers_fp8))
        except ImportError:
            print("transformers not installed: its row is skipped")
        try:
            from compressed_tensors.quantization import QuantizationArgs
            from compressed_tensors.quantization.lifecycle.forward import dequantize

            block_args = QuantizationArgs(num_bits=8, type="float", strategy="block",
                                          block_structure=[128, 128], symmetric=True)

            def compressed_tensors_fp8():
                with safe_open(os.path.join(fp8_dir, "model.safetensors"), "pt") as f:
                    for name in names:
                        dequantize(f.get_tensor(name), f.get_tensor(name + "_scale_inv"),
                                   args=block_args, dtype=torch.bfloat16)

            report("fp8 block 128x128", "compressed-tensors dequantize (block)",
                   best_of(args.repeat, compressed_tensors_fp8))
        except ImportError:
            print("compressed-tensors not installed: its row is skipped")

        # INT4, group 128: GPTQ layout and compressed-tensors' pack-quantized layout.
        gptq_dir, ct_dir = os.path.join(folder, "gptq"), os.path.join(folder, "ct")
        os.makedirs(gptq_dir)
        os.makedirs(ct_dir)
        gptq, ct = {}, {}
        for name in names:
            w = torch.randn(args.rows, args.cols)
            gptq.update(quant.quantize(w, "gptq", name=name, bits=4, group_size=128).tensors)
            ct.update(quant.quantize(w, "pack_quantized", name=name, bits=4,
                                     group_size=128).tensors)
        ct = {k: (v.bfloat16() if k.endswith("weight_scale") else v) for k, v in ct.items()}
        save_file(gptq, os.path.join(gptq_dir, "model.safetensors"))
        save_file(ct, os.path.join(ct_dir, "model.safetensors"))
        del gptq, ct
        with open(os.path.join(gptq_dir, "config.json"), "w") as config:
            json.dump({"quantization_config": {"quant_method": "gptq", "bits": 4,
                                               "group_size": 128, "desc_act": False}}, config)
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                   "group_size": 128}
        with open(os.path.join(ct_dir, "config.json"), "w") as config:
            json.dump({"quantization_config": {
                "quant_method": "compressed-tensors", "format": "pack-quantized",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}},
                config)

        def ours_from(folder_path):
            def run():
                view = quant.DenseView(folder_path, torch.bfloat16)
                for name in names:
                    view[name]
            return run

        report("int4 g128 (gptq)", "torch_safetensors.quant", best_of(args.repeat,
                                                                      ours_from(gptq_dir)))
        report("int4 g128 (pack-quantized)", "torch_safetensors.quant",
               best_of(args.repeat, ours_from(ct_dir)))
        try:
            from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
            from compressed_tensors.quantization import QuantizationArgs
            from compressed_tensors.quantization.lifecycle.forward import dequantize

            group_args = QuantizationArgs(**weights)

            def compressed_tensors_int4():
                with safe_open(os.path.join(ct_dir, "model.safetensors"), "pt") as f:
                    for name in names:
                        prefix = name[: -len("weight")]
                        shape = torch.Size(f.get_tensor(prefix + "weight_shape").tolist())
                        q = unpack_from_int32(f.get_tensor(prefix + "weight_packed"), 4, shape)
                        dequantize(q, f.get_tensor(prefix + "weight_scale"), args=group_args,
                                   dtype=torch.bfloat16)

            report("int4 g128 (pack-quantized)", "compressed-tensors unpack + dequantize",
                   best_of(args.repeat, compressed_tensors_int4))
        except ImportError:
            print("compressed-tensors not installed: its row is skipped")
        # compressed-tensors' other formats, written by its own compressors (MX: E8M0 scales per
        # 32; NVFP4: F8_E4M3 per 16 and a global scale), read by ours and by its decompressors.
        try:
            mx_cases(folder, names, args, report)
        except ImportError:
            print("compressed-tensors not installed: its MX / NVFP4 rows are skipped")
        best = [float("inf")] * len(cases)
        for _ in range(args.repeat):
            for i, (_, _, run) in enumerate(cases):
                start = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - start)
    for (case, who, _), seconds in zip(cases, best):
        gbs = dense_bytes / seconds / 1e9
        results.append({"case": case, "implementation": who, "seconds": seconds, "GB/s": gbs})
        print(f"{case:<28} {who:<44} {seconds * 1e3:9.1f} ms {gbs:8.2f} GB/s", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
