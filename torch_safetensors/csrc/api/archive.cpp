// OutputArchive / InputArchive: torch's archive interface over dotted names in one file.
#include "torch_safetensors/archive.h"

#include <algorithm>
#include <unordered_set>

#include "adapters/load_tensor.h"
#include "check.h"

namespace torch::safetensors {

OutputArchive::OutputArchive() = default;

void OutputArchive::write(const std::string& key, const at::Tensor& tensor, bool is_buffer) {
  const bool taken = std::any_of(tensors_.begin(), tensors_.end(),
                                 [&](const auto& named) { return named.first == key; });
  TS_CHECK(!taken, "<archive>", "the key \"", key, "\" is written twice");
  TS_CHECK(tensor.defined(), "<archive>", "the tensor for \"", key, "\" is undefined");
  tensors_.emplace_back(key, tensor);
}

void OutputArchive::write(const std::string& key, const c10::IValue& value) {
  TS_CHECK(value.isTensor(), "<archive>", "the value for \"", key, "\" is a ", value.tagKind(),
           ", but safetensors files hold tensors only (put other values in the metadata)");
  write(key, value.toTensor());
}

void OutputArchive::write(const std::string& key, const OutputArchive& nested) {
  for (const auto& [name, tensor] : nested.tensors_) write(key + "." + name, tensor);
}

void OutputArchive::save_to(const SaveTo& to, const SaveMetadata& metadata) const {
  save(tensors_, to, metadata);
}

void InputArchive::load_from(const LoadFrom& from, std::optional<c10::Device> device) {
  LoadOptions options;
  options.device = device;
  load_from(from, options);
}

void InputArchive::load_from(const LoadFrom& from, const LoadOptions& options) {
  file_ = std::make_shared<const File>(from.open(options));
  prefix_.clear();
}

void InputArchive::load_from(const char* data, size_t size, std::optional<c10::Device> device) {
  load_from(LoadFrom(copied_memory_source(data, size)), device);
}

void InputArchive::load_from(const ReadFunction& read, const SizeFunction& size,
                             std::optional<c10::Device> device) {
  load_from(LoadFrom(function_source(read, size)), device);
}

const File& InputArchive::file(const std::string& key) const {
  TS_CHECK(file_, "<archive>", "reading \"", prefix_ + key, "\" before load_from");
  return *file_;
}

bool InputArchive::try_read(const std::string& key, at::Tensor& tensor, bool is_buffer) {
  const File& source = file(key);
  const std::string name = prefix_ + key;
  if (!source.contains(name)) return false;
  adapters::assign_like_torch_load(tensor, source.tensor(name));
  return true;
}

void InputArchive::read(const std::string& key, at::Tensor& tensor, bool is_buffer) {
  TS_CHECK(try_read(key, tensor, is_buffer), file(key).path(), "no tensor \"", prefix_ + key,
           "\" in the file");
}

bool InputArchive::try_read(const std::string& key, c10::IValue& value) {
  at::Tensor tensor;
  if (!try_read(key, tensor)) return false;
  value = std::move(tensor);
  return true;
}

void InputArchive::read(const std::string& key, c10::IValue& value) {
  TS_CHECK(try_read(key, value), file(key).path(), "no tensor \"", prefix_ + key, "\" in the file");
}

bool InputArchive::try_read(const std::string& key, InputArchive& nested) {
  const File& source = file(key);
  const std::string prefix = prefix_ + key + ".";
  for (const std::string& name : source.keys()) {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      nested.file_ = file_;
      nested.prefix_ = prefix;
      return true;
    }
  }
  return false;
}

void InputArchive::read(const std::string& key, InputArchive& nested) {
  TS_CHECK(try_read(key, nested), file(key).path(), "no tensors under \"", prefix_ + key,
           ".\" in the file");
}

std::vector<std::string> InputArchive::keys() {
  const File& source = file("");
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  for (const std::string& name : source.keys()) {
    if (name.compare(0, prefix_.size(), prefix_) != 0) continue;
    std::string key = name.substr(prefix_.size());
    key = key.substr(0, key.find('.'));
    if (seen.insert(key).second) out.push_back(std::move(key));
  }
  return out;
}

}  // namespace torch::safetensors
