// Everything of the core library: safetensors.h, plus torch::nn modules, optimizers, archives,
// TorchScript modules, quantized weights and tensor/pipeline-parallel plans. The optional
// components have their own headers (aoti.h, convert.h, distributed_c10d.h, executorch.h),
// installed with them.
#pragma once

#include "torch_safetensors/archive.h"
#include "torch_safetensors/distributed.h"
#include "torch_safetensors/jit.h"
#include "torch_safetensors/module.h"
#include "torch_safetensors/optim.h"
#include "torch_safetensors/quant.h"
#include "torch_safetensors/safetensors.h"
