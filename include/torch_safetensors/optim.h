// LibTorch optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS) in safetensors files, for
// resuming training: torch::save(optimizer, path) / torch::load(optimizer, path), with the state
// tensors as tensors and everything else as JSON in `__metadata__`:
//   "optimizer"     the type: "Adam", "AdamW", "SGD", "RMSprop", "Adagrad" or "LBFGS";
//   "param_groups"  [{"params": [0, 1, ...], "lr": ..., ...}, ...]: each group's options, its
//                   parameters as indices over all groups in order (PyTorch's state_dict layout);
//   "state"         {"<index>": {"step": ..., "old_dirs": <count>, ...}, ...}: each parameter's
//                   scalar state (step counters; list lengths for LBFGS);
//   tensors         "state.<index>.<field>" (LBFGS lists: "state.<index>.<field>.<k>").
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/optim/optimizer.h>

#include "torch_safetensors/export.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

// What an optimizer's state is written as: tensors and metadata, for any destination.
struct TS_API OptimizerState {
  std::vector<SaveEntry> entries;
  Metadata metadata;
};
TS_API OptimizerState optimizer_state(const torch::optim::Optimizer& optimizer);

// Restores an optimizer of the same type with the same parameter groups (same counts) from a
// file written by save(optimizer, ...): every group's options and every parameter's state, which
// is replaced. State tensors go to their parameter's device. A file of another optimizer type,
// other group sizes, or missing or malformed entries is a c10::Error naming the file and the key;
// the optimizer is left unchanged then.
TS_API void restore_optimizer(torch::optim::Optimizer& optimizer, const File& file);

// torch::save(optimizer, destination) / torch::load(optimizer, source[, device]): any SaveTo and
// LoadFrom (paths, streams, functions; `(data, size)` and `(read, size)` through serialize.h).
// State tensors always go to their parameter's device; `device` only says where they are read to.
TS_API void save(const torch::optim::Optimizer& optimizer, const SaveTo& to);
TS_API void load(torch::optim::Optimizer& optimizer, const LoadFrom& from,
                 std::optional<c10::Device> device = std::nullopt);

}  // namespace torch::safetensors
