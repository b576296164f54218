// Archives like torch::serialize::OutputArchive / InputArchive, over a safetensors file: code that
// serializes its own types through `operator<<` / `operator>>` on torch's archives ports by
// changing the archive type. A nested archive is a dotted prefix ("encoder.layer.weight"), as in a
// module's state dict. A safetensors file holds tensors only: writing a non-tensor IValue (an int,
// a string, a list) is a c10::Error naming the key; keep such values in metadata.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/ivalue.h>

#include "torch_safetensors/export.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

class TS_API OutputArchive {
 public:
  OutputArchive();

  // A key with a '.' reads back as a nested key too; a key written twice is an error. is_buffer is
  // accepted for torch's signature and changes nothing (files do not tell buffers apart).
  void write(const std::string& key, const at::Tensor& tensor, bool is_buffer = false);
  // Tensors only (see above).
  void write(const std::string& key, const c10::IValue& value);
  // Every tensor of `nested`, under "key.".
  void write(const std::string& key, const OutputArchive& nested);

  // Saves everything written (tied or overlapping tensors are refused as by save(tensors)).
  void save_to(const SaveTo& to, const SaveMetadata& metadata = {}) const;

  const NamedTensors& tensors() const { return tensors_; }

 private:
  NamedTensors tensors_;
};

class TS_API InputArchive {
 public:
  InputArchive() = default;

  // Opens the source; `device` like torch's load_from (tensors are read onto it).
  void load_from(const LoadFrom& from, std::optional<c10::Device> device = std::nullopt);
  void load_from(const LoadFrom& from, const LoadOptions& options);
  void load_from(const char* data, size_t size, std::optional<c10::Device> device = std::nullopt);
  void load_from(const ReadFunction& read, const SizeFunction& size,
                 std::optional<c10::Device> device = std::nullopt);

  // torch's semantics: a defined `tensor` takes the value under NoGradGuard (`set_` on the same
  // device, `set_data` across devices); an undefined one is assigned. try_read returns false when
  // the key is absent; read throws a c10::Error naming the source and the key.
  bool try_read(const std::string& key, at::Tensor& tensor, bool is_buffer = false);
  void read(const std::string& key, at::Tensor& tensor, bool is_buffer = false);
  bool try_read(const std::string& key, c10::IValue& value);
  void read(const std::string& key, c10::IValue& value);
  // The tensors under "key." (this archive's prefix included).
  bool try_read(const std::string& key, InputArchive& nested);
  void read(const std::string& key, InputArchive& nested);

  // The names at this level, in file order, each once: tensors, and nested archives by their name.
  std::vector<std::string> keys();

 private:
  const File& file(const std::string& key) const;
  std::shared_ptr<const File> file_;
  std::string prefix_;  // "" or "a.b."
};

}  // namespace torch::safetensors
