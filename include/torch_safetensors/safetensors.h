// torch_safetensors: the safetensors format for LibTorch. This header is the light core: the
// format, the lazy handle, loading and saving tensors, sharded checkpoints. Modules, optimizers,
// archives, TorchScript, quantized weights and parallel plans are in all.h (or their own headers).
//
//   auto tensors = torch::safetensors::load("model.safetensors");      // zero-copy, lazy
//   torch::safetensors::save({{"weight", w}}, "model.safetensors");    // atomic
//   torch::safetensors::File f("model.safetensors");                    // like safe_open
//   torch::safetensors::Checkpoint c("Llama-3-8B/");   // a sharded checkpoint (index + shards)
#pragma once

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/dtype.h"
#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/errors.h"
#include "torch_safetensors/export.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/options.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/sharded.h"
#include "torch_safetensors/slice.h"
#include "torch_safetensors/source.h"
#include "torch_safetensors/types.h"
#include "torch_safetensors/version.h"
