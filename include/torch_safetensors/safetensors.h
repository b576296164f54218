// torch_safetensors: the safetensors format for LibTorch. Include this one header.
//
//   auto tensors = torch::safetensors::load("model.safetensors");      // zero-copy, lazy
//   torch::safetensors::load(*module, "model.safetensors");            // like torch::load
//   torch::safetensors::save(*module, "model.safetensors");            // like torch::save
//   torch::safetensors::File f("model.safetensors");                    // like safe_open
//   torch::safetensors::Checkpoint c("Llama-3-8B/");   // a sharded checkpoint (index + shards)
#pragma once

#include "torch_safetensors/archive.h"
#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/distributed.h"
#include "torch_safetensors/dtype.h"
#include "torch_safetensors/errors.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/jit.h"
#include "torch_safetensors/module.h"
#include "torch_safetensors/optim.h"
#include "torch_safetensors/quant.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/slice.h"
#include "torch_safetensors/source.h"
#include "torch_safetensors/version.h"
