#include "adapters/shared_memory.h"

#include <algorithm>
#include <map>
#include <tuple>

namespace torch::safetensors::adapters {
namespace {

// A tensor subclass dispatched to Python (a DTensor, whose memory is its local shard's) has no
// memory of its own to share or cover; touching its storage may throw.
bool is_wrapper(const at::Tensor& t) { return t.unsafeGetTensorImpl()->is_python_dispatch(); }

bool has_memory(const at::Tensor& t) {
  return t.defined() && !is_wrapper(t) && t.has_storage() && !t.is_meta() &&
         t.storage().data() != nullptr && t.storage().nbytes() != 0;
}

}  // namespace

std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& t) {
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  if (t.numel() == 0) return {begin, begin};
  uintptr_t last = 0;  // offset of the last element's first byte
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d) * t.element_size();
  return {begin, begin + last + t.element_size()};
}

bool covers_storage(const at::Tensor& t) {
  if (!t.defined() || is_wrapper(t) || !t.has_storage()) return false;
  return t.storage_offset() == 0 &&
         uint64_t(t.numel()) * t.element_size() == uint64_t(t.storage().nbytes());
}

std::vector<std::vector<size_t>> memory_groups(const NamedTensors& tensors) {
  // The reference keys storages by (device, data pointer, size in bytes): storages over one
  // address with different sizes are not shared (test_pt_sf_save_model_overlapping_storage).
  using Key = std::tuple<int, int, const void*, size_t>;
  struct Use {
    uintptr_t begin, end;
    const std::string* name;
    size_t index;
  };
  std::map<Key, size_t> storage_index;  // key → position in `storages` (first appearance)
  std::vector<std::vector<Use>> storages;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i].second;
    if (!has_memory(t)) continue;
    const Key key{int(t.device().type()), int(t.device().index()), t.storage().data(),
                  t.storage().nbytes()};
    auto [it, inserted] = storage_index.emplace(key, storages.size());
    if (inserted) storages.emplace_back();
    const auto [begin, end] = byte_extent(t);
    storages[it->second].push_back({begin, end, &tensors[i].first, i});
  }
  std::vector<std::vector<size_t>> groups;
  for (auto& uses : storages) {
    // By address, as the reference sorts (data_ptr, end_ptr, name).
    std::sort(uses.begin(), uses.end(), [](const Use& a, const Use& b) {
      return std::tie(a.begin, a.end, *a.name) < std::tie(b.begin, b.end, *b.name);
    });
    uintptr_t group_end = 0;
    bool open = false;  // whether the last group takes the next tensor if it overlaps
    for (const Use& use : uses) {
      const bool empty = use.begin == use.end;  // no elements: overlaps nothing
      if (!open || empty || use.begin >= group_end) {
        groups.emplace_back();
        open = !empty;
        group_end = use.end;
      } else {
        group_end = std::max(group_end, use.end);
      }
      groups.back().push_back(use.index);
    }
  }
  return groups;
}

std::vector<std::vector<size_t>> overlapping_groups(const NamedTensors& tensors) {
  std::vector<std::vector<size_t>> out;
  for (auto& group : memory_groups(tensors)) {
    if (group.size() > 1) out.push_back(std::move(group));
  }
  return out;
}

std::vector<std::string> SharedNames::dropped() const {
  std::vector<std::string> out;
  for (const auto& name : names) {
    if (name != keep) out.push_back(name);
  }
  return out;
}

std::vector<SharedNames> choose_kept_names(const NamedTensors& tensors,
                                           const std::unordered_set<std::string>& preferred,
                                           const std::unordered_set<std::string>& discard) {
  std::vector<SharedNames> out;
  for (const auto& group : memory_groups(tensors)) {
    SharedNames shared;
    std::vector<std::string> complete;
    for (size_t i : group) {
      shared.names.push_back(tensors[i].first);
      if (covers_storage(tensors[i].second)) complete.push_back(tensors[i].first);
    }
    std::sort(shared.names.begin(), shared.names.end());
    std::sort(complete.begin(), complete.end());
    const auto first_of = [&](auto&& wanted) -> std::optional<std::string> {
      const auto it = std::find_if(complete.begin(), complete.end(), wanted);
      if (it == complete.end()) return std::nullopt;
      return *it;
    };
    shared.keep = first_of([&](const std::string& n) { return preferred.count(n) > 0; });
    if (!shared.keep)
      shared.keep = first_of([&](const std::string& n) { return !discard.count(n); });
    if (!shared.keep && !complete.empty()) shared.keep = complete.front();
    out.push_back(std::move(shared));
  }
  return out;
}

}  // namespace torch::safetensors::adapters
