#include "adapters/shared_memory.h"

#include <algorithm>
#include <map>
#include <tuple>

namespace torch::safetensors::adapters {

std::vector<std::vector<size_t>> overlapping_groups(const std::vector<at::Tensor>& tensors) {
  // (device, storage) → byte extents [first byte, past the last element) of the tensors using it.
  std::map<std::tuple<int, int, const void*>, std::vector<std::tuple<uintptr_t, uintptr_t, size_t>>>
      users;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined() || t.numel() == 0 || !t.has_storage() || t.storage().data() == nullptr) {
      continue;
    }
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    uintptr_t extent = t.element_size();
    for (int64_t d = 0; d < t.dim(); ++d) {
      extent += (t.size(d) - 1) * t.stride(d) * t.element_size();
    }
    const auto key = std::make_tuple(int(t.device().type()), int(t.device().index()),
                                     static_cast<const void*>(t.storage().data()));
    users[key].emplace_back(begin, begin + extent, i);
  }
  std::vector<std::vector<size_t>> groups;
  for (auto& [key, extents] : users) {
    if (extents.size() < 2) continue;
    std::sort(extents.begin(), extents.end());
    std::vector<size_t> run;  // tensors whose extents chain into one overlapping stretch
    uintptr_t run_end = 0;
    for (const auto& [begin, end, index] : extents) {
      if (!run.empty() && begin >= run_end) {
        if (run.size() > 1) groups.push_back(run);
        run.clear();
      }
      run.push_back(index);
      run_end = run.size() == 1 ? end : std::max(run_end, end);
    }
    if (run.size() > 1) groups.push_back(run);
  }
  return groups;
}

}  // namespace torch::safetensors::adapters
