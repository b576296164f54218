// torch::nn::Module load/save, with tied (shared-memory) tensors handled like the reference's
// save_model/load_model.
#include "torch_safetensors/module.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "adapters/load_tensor.h"
#include "adapters/shared_memory.h"
#include "check.h"

namespace torch::safetensors {
namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

Named named_tensors(const torch::nn::Module& module) {
  Named out;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (b.value().defined()) out.emplace_back(b.key(), b.value());
  }
  return out;
}

// Groups of names whose tensors share memory (tied weights).
std::vector<std::vector<std::string>> tied_groups(const Named& tensors) {
  std::vector<at::Tensor> values;
  values.reserve(tensors.size());
  for (const auto& named : tensors) values.push_back(named.second);
  std::vector<std::vector<std::string>> groups;
  for (const auto& group : adapters::overlapping_groups(values)) {
    groups.emplace_back();
    for (size_t i : group) groups.back().push_back(tensors[i].first);
  }
  return groups;
}

bool covers_storage(const at::Tensor& t) {
  return t.data_ptr() == t.storage().data() && t.nbytes() == t.storage().nbytes();
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

void save(const torch::nn::Module& module, const std::string& path,
          const std::optional<Metadata>& metadata) {
  Named tensors = named_tensors(module);
  Metadata meta = metadata.value_or(Metadata());
  std::set<std::string> dropped;
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  for (const auto& group : tied_groups(tensors)) {
    std::vector<std::string> complete;
    for (const auto& name : group) {
      if (covers_storage(by_name.at(name))) complete.push_back(name);
    }
    TS_CHECK(!complete.empty(), path, "tensors ", join(group),
             " share memory but none of them covers it all; refusing to save a partial view "
             "(it could store much more memory than needed)");
    const std::string keep = *std::min_element(complete.begin(), complete.end());
    for (const auto& name : group) {
      if (name == keep) continue;
      dropped.insert(name);
      meta.emplace(name, keep);  // does not override the caller's keys
    }
  }
  std::vector<SaveEntry> entries;
  for (const auto& [name, tensor] : tensors) {
    if (!dropped.count(name)) entries.emplace_back(name, tensor);
  }
  save(entries, path, meta.empty() ? metadata : std::optional<Metadata>(meta));
}

ModuleLoadReport load(torch::nn::Module& module, const std::string& path,
                      const ModuleLoadOptions& options) {
  // Tensors stay on the CPU: each goes to its parameter's own device.
  const File file(path, LoadOptions().with_backend(options.backend));
  Named targets = named_tensors(module);

  // A tied tensor absent from the file is satisfied by any member of its group that is present.
  std::map<std::string, std::vector<std::string>> group_of;
  for (const auto& group : tied_groups(targets)) {
    for (const auto& name : group) group_of[name] = group;
  }

  ModuleLoadReport report;
  std::set<std::string> in_module;
  std::vector<std::pair<at::Tensor, std::string>> assignments;  // (target, file name)
  std::ostringstream shape_details;
  for (const auto& [name, target] : targets) {
    in_module.insert(name);
    if (!file.contains(name)) {
      const auto group = group_of.find(name);
      const bool satisfied =
          group != group_of.end() &&
          std::any_of(group->second.begin(), group->second.end(),
                      [&](const std::string& other) { return file.contains(other); });
      if (!satisfied) report.missing.push_back(name);
      continue;
    }
    const TensorInfo& info = file.info(name);
    const std::vector<int64_t> file_sizes = adapters::torch_sizes(info, path);
    if (target.sizes().vec() != file_sizes) {
      report.mismatched.push_back(name);
      shape_details << "\n  " << name << ": module " << target.sizes() << ", file "
                    << c10::IntArrayRef(file_sizes);
      continue;
    }
    assignments.emplace_back(target, name);
  }
  for (const auto& name : file.keys()) {
    if (!in_module.count(name)) report.unexpected.push_back(name);
  }

  if (options.strict && !report.ok()) {
    std::ostringstream msg;
    msg << "cannot load into module " << module.name() << ":";
    if (!report.missing.empty()) msg << "\n  missing from the file: " << join(report.missing);
    if (!report.unexpected.empty()) msg << "\n  not in the module: " << join(report.unexpected);
    if (!report.mismatched.empty()) msg << "\n  shape mismatch:" << shape_details.str();
    TS_FAIL(path, msg.str());
  }

  torch::NoGradGuard no_grad;
  for (auto& [target, name] : assignments) {
    at::Tensor source = file.tensor(name);
    const bool tied = group_of.count(name) > 0;
    if (!tied && target.device().is_cpu() && target.scalar_type() == source.scalar_type()) {
      target.set_(source);  // zero-copy: the parameter now lives in the (copy-on-write) mapping
    } else {
      target.copy_(source);  // keeps device, dtype and ties
    }
  }
  return report;
}

}  // namespace torch::safetensors
