// torch::nn::Module load/save, and loading into named tensors, with tied (shared-memory) tensors
// handled by the tie policy of adapters/shared_memory.h, like the reference's
// save_model/load_model.
#include "torch_safetensors/module.h"

#include <torch/nn/module.h>
#include <torch/utils.h>

#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <c10/util/StringUtil.h>
#include "adapters/load_tensor.h"
#include "adapters/shared_memory.h"
#include "api/handle.h"
#include "api/named_module.h"

#include "check.h"

namespace torch::safetensors {
namespace {

// The groups of two or more names that share memory none of them covers.
std::vector<std::vector<std::string>> unkeepable(
    const std::vector<ModuleLoadPlan::TiedGroup>& ties) {
  std::vector<std::vector<std::string>> out;
  for (const auto& group : ties) {
    if (!group.keep && group.names.size() > 1) out.push_back(group.names);
  }
  return out;
}

std::string describe_unkeepable(const std::vector<std::vector<std::string>>& groups) {
  std::string out = "tensors share memory but none of them covers it all:";
  for (const auto& group : groups) out += " [" + c10::Join(", ", group) + "]";
  return out;
}

}  // namespace

NamedTensors module_tensors(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (b.value().defined()) out.emplace_back(b.key(), b.value());
  }
  return out;
}

ModuleLoadPlan::ModuleLoadPlan(NamedTensors targets, Checkpoint checkpoint)
    : checkpoint_(std::move(checkpoint)) {
  const Checkpoint& file = checkpoint_;
  const std::optional<c10::Device> device = file.options().device;
  const c10::Device loaded_device = file.options().target_device();
  const std::vector<std::string>& file_names = file.keys();
  const std::unordered_set<std::string> in_file(file_names.begin(), file_names.end());

  std::unordered_map<std::string, size_t> group_of;  // target name → index in ties_
  for (auto& shared : adapters::choose_kept_names(targets, /*preferred=*/in_file)) {
    for (const auto& name : shared.names) group_of.emplace(name, ties_.size());
    ties_.push_back({std::move(shared.names), std::move(shared.keep)});
  }
  std::unordered_map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, target] : targets) by_name.emplace(name, &target);

  for (const auto& [name, target] : targets) {
    const auto group_index = group_of.find(name);
    const TiedGroup* group = group_index == group_of.end() ? nullptr : &ties_[group_index->second];
    const bool dropped = group && group->keep && *group->keep != name;
    if (!file.contains(name)) {
      if (!dropped) report_.missing.push_back(name);
      continue;
    }
    if (dropped) {
      // The file holds a name the tie policy drops. Without the kept name it is unexpected (the
      // reference's load_model). With it (a state dict saved without dropping ties), what this
      // name will see once the kept one is loaded must be what the file holds for it: then it
      // loads, ties intact; otherwise both cannot be honoured (a tied conflict).
      if (!file.contains(*group->keep)) {
        report_.unexpected.push_back(name);
        continue;
      }
      const at::Tensor& keeper = *by_name.at(*group->keep);
      const at::Tensor kept = file.tensor(*group->keep);
      const at::Tensor here = file.tensor(name);
      if (kept.sizes() != keeper.sizes()) continue;  // the kept name's mismatch says it
      const at::Tensor seen = kept.as_strided(target.sizes(), target.strides(),
                                              target.storage_offset() - keeper.storage_offset());
      if (!(seen.sizes() == here.sizes() && seen.dtype() == here.dtype() && seen.equal(here)))
        report_.tied_conflicts.emplace_back(name, *group->keep);
      continue;
    }
    if (group && !group->keep && group->names.size() > 1) continue;  // see ties()
    const TensorInfo& info = file.info(name);
    std::vector<int64_t> file_sizes = adapters::torch_sizes(info, file.path());
    if (target.sizes().vec() != file_sizes) {
      report_.mismatched.push_back({name, target.sizes().vec(), std::move(file_sizes)});
      continue;
    }
    // set_ / set_data only where nothing else can see the old memory: the target covers its
    // storage, and every name tied to it is the same tensor.
    bool replaceable = adapters::covers_storage(target);
    if (replaceable && group) {
      for (const auto& other : group->names) {
        replaceable =
            replaceable && by_name.at(other)->unsafeGetTensorImpl() == target.unsafeGetTensorImpl();
      }
    }
    // kSet only where the loaded tensor (after dtype on load) has the target's dtype.
    Mode mode = Mode::kCopy;
    if (replaceable && target.device() == loaded_device &&
        target.scalar_type() == detail::loaded_dtype(to_scalar_type(info.dtype), file.options())) {
      mode = Mode::kSet;
    } else if (replaceable && device && target.device() != loaded_device) {
      mode = Mode::kSetData;
    }
    assignments_.push_back({target, name, mode});
  }
  for (const auto& name : file_names) {
    if (!by_name.count(name)) report_.unexpected.push_back(name);
  }
}

std::vector<std::string> ModuleLoadPlan::loaded_names() const {
  std::vector<std::string> names;
  names.reserve(assignments_.size());
  for (const Assignment& assignment : assignments_) names.push_back(assignment.name);
  return names;
}

void ModuleLoadPlan::apply() const {
  torch::NoGradGuard no_grad;
  // Targets already on the load's (non-CPU) device, contiguous and of the stored dtype, are
  // filled in place, all through one staging ring: no second copy of the model on the device.
  const LoadOptions& options = checkpoint_.options();
  const c10::Device load_device = options.target_device();
  std::vector<detail::LoadItem> in_place;
  std::vector<bool> filled(assignments_.size(), false);
  for (size_t i = 0; i < assignments_.size(); ++i) {
    const Assignment& a = assignments_[i];
    const c10::Device at = a.target.device();
    const bool on_load_device = at.type() == load_device.type() &&
                                (!load_device.has_index() || at.index() == load_device.index());
    if (a.mode == Mode::kSetData || !detail::staged(options) || !on_load_device ||
        !a.target.is_contiguous() || options.dtype) {
      continue;
    }
    const detail::Located tensor = detail::locate(checkpoint_, a.name);
    if (a.target.scalar_type() != tensor.info->scalar_type()) continue;
    in_place.push_back({tensor.file, tensor.info, a.target});
    filled[i] = true;
  }
  if (!in_place.empty()) detail::load_many(in_place, options);
  for (size_t i = 0; i < assignments_.size(); ++i) {
    if (filled[i]) continue;
    const Assignment& assignment = assignments_[i];
    at::Tensor source = checkpoint_.tensor(assignment.name);
    at::Tensor target = assignment.target;  // a handle: changes the caller's tensor
    switch (assignment.mode) {
      case Mode::kSet:
        target.set_(source);  // the target now lives in the loaded (copy-on-write) storage
        break;
      case Mode::kSetData:
        target.set_data(source);  // moves to the requested device, keeping its identity
        break;
      case Mode::kCopy:
        target.copy_(source);  // keeps device, dtype and ties
        break;
    }
  }
}

ModuleLoadReport load_into(const NamedTensors& targets, const LoadFrom& from,
                           const ModuleLoadOptions& options) {
  const ModuleLoadPlan plan(targets, open_checkpoint(from, options));
  const std::string& path = plan.checkpoint().path();
  const auto groups = unkeepable(plan.ties());
  TS_CHECK(groups.empty(), path, describe_unkeepable(groups),
           "; refusing to load a part of it through one name and not the rest");
  const ModuleLoadReport& report = plan.report();
  if (options.strict && !report.ok()) {
    std::ostringstream msg;
    msg << "cannot load:";
    if (!report.missing.empty())
      msg << "\n  missing from the file: " << c10::Join(", ", report.missing);
    if (!report.unexpected.empty())
      msg << "\n  not in the module: " << c10::Join(", ", report.unexpected);
    if (!report.tied_conflicts.empty()) {
      msg << "\n  tied in the module but different in the file:";
      for (const auto& [dropped, kept] : report.tied_conflicts) {
        msg << "\n  " << dropped << " and " << kept
            << " are one tensor in the module; the file holds both, with different values";
      }
    }
    if (!report.mismatched.empty()) {
      msg << "\n  shape mismatch:";
      for (const auto& m : report.mismatched) {
        msg << "\n  " << m.name << ": module " << c10::IntArrayRef(m.target_sizes) << ", file "
            << c10::IntArrayRef(m.file_sizes);
      }
    }
    TS_FAIL(path, msg.str());
  }
  plan.apply();
  return report;
}

ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from,
                      const ModuleLoadOptions& options) {
  return load_into(module_tensors(module), from, options);
}

ModuleLoadReport load(torch::nn::Module& module, const LoadFrom& from, c10::Device device) {
  return load_into(module_tensors(module), from, ModuleLoadOptions().with_device(device));
}

std::vector<SaveEntry> drop_tied_duplicates(const NamedTensors& tensors, Metadata& metadata,
                                            const std::unordered_set<std::string>& discard,
                                            const std::string& destination,
                                            bool refuse_partial_views) {
  std::unordered_set<std::string> dropped;
  std::vector<std::vector<std::string>> groups;
  for (const auto& shared : adapters::choose_kept_names(tensors, /*preferred=*/{}, discard)) {
    if (shared.names.size() < 2 && (shared.keep || !refuse_partial_views)) continue;
    if (!shared.keep) {
      groups.push_back(shared.names);
      continue;
    }
    for (const auto& name : shared.dropped()) {
      dropped.insert(name);
      metadata.emplace(name, *shared.keep);  // does not override the caller's keys
    }
  }
  TS_CHECK(groups.empty(), destination, describe_unkeepable(groups),
           "; refusing to save a partial view (it could store much more memory than needed)");
  std::vector<SaveEntry> entries;
  for (const auto& [name, tensor] : tensors) {
    if (!dropped.count(name)) entries.emplace_back(name, tensor);
  }
  return entries;
}

void save_named_module(const NamedTensors& tensors, const SaveTo& to,
                       const std::optional<Metadata>& metadata) {
  Metadata meta = metadata.value_or(Metadata());
  std::vector<SaveEntry> entries = drop_tied_duplicates(tensors, meta, {}, to.name());
  // Metadata only when given or when names were dropped, as the reference's save_model.
  save(std::move(entries), to, meta.empty() ? metadata : std::optional<Metadata>(std::move(meta)));
}

void save(const torch::nn::Module& module, const SaveTo& to, const SaveMetadata& metadata) {
  save_named_module(module_tensors(module), to, metadata.value());
}

}  // namespace torch::safetensors
