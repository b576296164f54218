// Loading an AOTInductor package's constants from safetensors (include/torch_safetensors/aoti.h).
//
// What the package expects comes from its model library's C ABI (aoti_runtime/interface.h: name,
// original FQN, dtype, byte size, folded or not, for each constant) and, for sizes and strides,
// from the generated wrapper source AOTInductor packages beside that library (the
// `constants_info_[i].shape = {...};` lines its constructor is made of), cross-checked with the
// C ABI index by index. The runner's loader neither checks dtype nor size: it memcpy's the storage
// or keeps the pointer, so a wrong tensor would be read out of bounds. Hence every check here
// happens before the package is touched.
#include "torch_safetensors/aoti.h"

#include <dlfcn.h>

#include <ATen/DynamicLibrary.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/equal.h>
#include <c10/util/StringUtil.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>

#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "api/handle.h"
#include "check.h"
#include "torch_safetensors/checkpoint.h"

namespace torch::safetensors {
namespace {

using torch::inductor::AOTIModelContainerRunner;
using torch::inductor::AOTIModelPackageLoader;

// The runner keeps the model library and the container handle protected; the C ABI functions the
// library exports are the stable interface to them. A derived class may name protected members
// of its base, and a pointer to such a member applies to any runner.
struct RunnerAccess : AOTIModelContainerRunner {
  static at::DynamicLibrary& library(AOTIModelContainerRunner& runner) {
    return *(runner.*(&RunnerAccess::model_so_));
  }
  static AOTInductorModelContainerHandle container(AOTIModelContainerRunner& runner) {
    return runner.*(&RunnerAccess::container_handle_);
  }
};

constexpr const char* kSource = "AOTInductor package";

AOTIModelContainerRunner& runner_of(AOTIModelPackageLoader& package) {
  AOTIModelContainerRunner* runner = package.get_runner();
  TS_CHECK(runner != nullptr, kSource, "the package loader holds no model runner");
  return *runner;
}

// AOTInductorModelContainer<Name> of the model library, typed by its declaration in interface.h
// (the symbol's name and type from one token, so they cannot disagree).
#define TS_AOTI_ABI(library, Name)                              \
  reinterpret_cast<decltype(&AOTInductorModelContainer##Name)>( \
      (library).sym("AOTInductorModelContainer" #Name))

void check_abi(AOTIRuntimeError error, const char* what, size_t index) {
  TS_CHECK(error == AOTI_RUNTIME_SUCCESS, kSource, what, " failed for constant ", index);
}

// "{8, 8}" -> {8, 8}; "{}" -> {} (a 0-d constant). nullopt for anything else.
std::optional<std::vector<int64_t>> parse_int_list(std::string_view text) {
  if (text.size() < 2 || text.front() != '{' || text.back() != '}') return std::nullopt;
  std::vector<int64_t> values;
  std::string inner(text.substr(1, text.size() - 2));
  std::istringstream in(inner);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(' ');
    if (first == std::string::npos) {
      if (values.empty() && inner.find_first_not_of(' ') == std::string::npos) break;
      return std::nullopt;
    }
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item.substr(first), &used);
    } catch (const std::exception&) {
      return std::nullopt;
    }
    if (item.find_first_not_of(" L", first + used) != std::string::npos || value < 0) {
      return std::nullopt;
    }
    values.push_back(value);
  }
  return values;
}

struct SourceShape {
  std::string fqn;
  std::optional<std::vector<int64_t>> sizes, strides;
};

// The `constants_info_[i].{shape,stride,original_fqn} = ...;` lines of the wrapper source that
// sits beside the model library (`<hash>.wrapper.so` / `<hash>.wrapper.cpp`); empty when absent.
std::unordered_map<size_t, SourceShape> source_shapes(at::DynamicLibrary& library) {
  std::unordered_map<size_t, SourceShape> shapes;
  Dl_info info{};
  void* symbol = library.sym("AOTInductorModelContainerGetNumConstants");
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return shapes;
  std::string path = info.dli_fname;
  if (path.size() < 3 || path.compare(path.size() - 3, 3, ".so") != 0) return shapes;
  path.replace(path.size() - 3, 3, ".cpp");
  std::ifstream in(path);
  std::string line;
  const std::string prefix = "constants_info_[";
  while (std::getline(in, line)) {
    const auto at = line.find(prefix);
    if (at == std::string::npos) continue;
    const auto close = line.find("].", at);
    const auto equals = line.find(" = ", at);
    if (close == std::string::npos || equals == std::string::npos || line.back() != ';') continue;
    size_t index = 0;
    try {
      index = std::stoul(line.substr(at + prefix.size(), close - at - prefix.size()));
    } catch (const std::exception&) {
      continue;
    }
    const std::string field = line.substr(close + 2, equals - close - 2);
    const std::string_view value(line.data() + equals + 3, line.size() - equals - 4);
    if (field == "shape") {
      shapes[index].sizes = parse_int_list(value);
    } else if (field == "stride") {
      shapes[index].strides = parse_int_list(value);
    } else if (field == "original_fqn" && value.size() >= 2 && value.front() == '"' &&
               value.back() == '"') {
      shapes[index].fqn = std::string(value.substr(1, value.size() - 2));
    }
  }
  return shapes;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size(), 1);
  for (size_t i = sizes.size(); i-- > 1;)
    strides[i - 1] = strides[i] * std::max<int64_t>(sizes[i], 1);
  return strides;
}

c10::Device package_device(AOTIModelPackageLoader& package) {
  const auto metadata = package.get_metadata();
  const auto it = metadata.find("AOTI_DEVICE_KEY");
  return it == metadata.end() || it->second.empty() ? c10::Device(c10::kCPU)
                                                    : c10::Device(it->second);
}

std::string describe_sizes(const AotiConstant& constant) {
  std::ostringstream out;
  if (constant.sizes) {
    out << c10::IntArrayRef(*constant.sizes);
  } else {
    out << constant.nbytes << " bytes";
  }
  return out.str();
}

// The raw handles of a constant buffer, by FQN (the C ABI's map entries).
std::unordered_map<std::string, AtenTensorHandle> buffer_handles(AOTIModelContainerRunner& runner,
                                                                 bool inactive) {
  const auto extract = TS_AOTI_ABI(RunnerAccess::library(runner), ExtractConstantsMapEntries);
  const AOTInductorConstantMapEntry* entries = nullptr;
  size_t count = 0;
  check_abi(extract(RunnerAccess::container(runner), &entries, &count, inactive),
            "ExtractConstantsMapEntries", 0);
  std::unordered_map<std::string, AtenTensorHandle> handles;
  for (size_t i = 0; i < count; ++i) handles.emplace(entries[i].name, entries[i].handle);
  return handles;
}

// For a user-managed constant the package makes a new tensor handle (sharing our storage) that it
// never deletes (aoti_runtime/utils.h, MaybeOwningAtenTensorHandle: torch 2.13), which would keep
// every set of weights ever loaded mapped. The handles it made for our loads, process-wide; each is
// deleted once a later load has replaced it in its buffer, so a package pins at most the two sets
// its buffers hold.
std::mutex borrowed_mutex;
std::unordered_set<AtenTensorHandle>& borrowed_handles() {
  static auto* handles = new std::unordered_set<AtenTensorHandle>();  // never destroyed
  return *handles;
}

// Runs `update` (a load into one buffer), then deletes the borrowed handles it replaced and
// registers the ones it made.
template <typename Update>
void update_buffer(AOTIModelContainerRunner& runner, bool inactive, bool user_managed,
                   const Update& update) {
  const auto before = buffer_handles(runner, inactive);
  update();
  const auto after = buffer_handles(runner, inactive);
  std::lock_guard<std::mutex> lock(borrowed_mutex);
  auto& borrowed = borrowed_handles();
  for (const auto& [fqn, handle] : after) {
    const auto old = before.find(fqn);
    if (old != before.end() && old->second == handle) continue;  // untouched
    if (old != before.end() && borrowed.erase(old->second) != 0) {
      aoti_torch_delete_tensor_object(old->second);
    }
    if (user_managed) borrowed.insert(handle);
  }
}

}  // namespace

std::vector<AotiConstant> aoti_constants(AOTIModelPackageLoader& package) {
  AOTIModelContainerRunner& runner = runner_of(package);
  at::DynamicLibrary& library = RunnerAccess::library(runner);
  const AOTInductorModelContainerHandle container = RunnerAccess::container(runner);
  const auto count_fn = TS_AOTI_ABI(library, GetNumConstants);
  const auto name_fn = TS_AOTI_ABI(library, GetConstantName);
  const auto fqn_fn = TS_AOTI_ABI(library, GetConstantOriginalFQN);
  const auto folded_fn = TS_AOTI_ABI(library, GetConstantFromFolded);
  const auto dtype_fn = TS_AOTI_ABI(library, GetConstantDtype);
  const auto size_fn = TS_AOTI_ABI(library, GetConstantDataSize);

  size_t count = 0;
  check_abi(count_fn(container, &count), "counting the constants", 0);
  const auto shapes = source_shapes(library);
  std::vector<AotiConstant> constants;
  for (size_t i = 0; i < count; ++i) {
    bool folded = false;
    check_abi(folded_fn(container, i, &folded), "GetConstantFromFolded", i);
    if (folded) continue;  // computed by the package from the others
    const char* name = nullptr;
    const char* fqn = nullptr;
    int32_t dtype = 0;
    size_t nbytes = 0;
    check_abi(name_fn(container, i, &name), "GetConstantName", i);
    check_abi(fqn_fn(container, i, &fqn), "GetConstantOriginalFQN", i);
    check_abi(dtype_fn(container, i, &dtype), "GetConstantDtype", i);
    check_abi(size_fn(container, i, &nbytes), "GetConstantDataSize", i);
    AotiConstant constant;
    constant.name = name;
    constant.fqn = fqn != nullptr && *fqn != '\0' ? fqn : name;
    constant.dtype = static_cast<c10::ScalarType>(dtype);
    constant.nbytes = nbytes;
    // The source's line for index i must describe the same constant; else trust only the ABI.
    const auto shape = shapes.find(i);
    if (shape != shapes.end() && shape->second.fqn == constant.fqn && shape->second.sizes &&
        shape->second.strides && shape->second.sizes->size() == shape->second.strides->size()) {
      constant.sizes = shape->second.sizes;
      constant.strides = shape->second.strides;
    }
    constants.push_back(std::move(constant));
  }
  return constants;
}

ModuleLoadReport load(AOTIModelPackageLoader& package, const LoadFrom& from,
                      const AotiLoadOptions& options) {
  const std::vector<AotiConstant> constants = aoti_constants(package);
  LoadOptions load_options = options;
  const c10::Device device = package_device(package);
  if (!load_options.device) load_options.device = device;
  TS_CHECK_VALUE(load_options.device->type() == device.type(), kSource, "the package runs on ",
                 device.type(), ", its constants cannot be loaded to ", *load_options.device);
  const Checkpoint checkpoint = open_checkpoint(from, load_options);
  const std::string& path = checkpoint.path();
  const auto& metadata = checkpoint.metadata();

  // Names already in the buffer being filled: a partial update may leave those out.
  std::unordered_set<std::string> present;
  for (const auto& [fqn, handle] : buffer_handles(runner_of(package), options.inactive)) {
    if (handle != nullptr) present.insert(fqn);
  }

  ModuleLoadReport report;
  std::vector<std::string> file_names;  // per constant loaded
  std::vector<const AotiConstant*> loaded;
  std::unordered_set<std::string> used;
  std::vector<std::string> cannot_run;  // missing and not in the buffer either
  for (const AotiConstant& constant : constants) {
    // The file's name: an alias given, the FQN itself, or the name a tied group's save kept (the
    // reference's save_model records each dropped name in __metadata__ as dropped -> kept).
    std::string name = constant.fqn;
    if (const auto alias = options.aliases.find(constant.fqn); alias != options.aliases.end()) {
      name = alias->second;
    } else if (!checkpoint.contains(name) && metadata) {
      const auto kept = metadata->find(name);
      if (kept != metadata->end() && checkpoint.contains(kept->second)) name = kept->second;
    }
    if (!checkpoint.contains(name)) {
      report.missing.push_back(constant.fqn);
      if (!present.count(constant.fqn)) cannot_run.push_back(constant.fqn);
      continue;
    }
    used.insert(name);
    const TensorInfo& info = checkpoint.info(name);
    const c10::ScalarType dtype = detail::loaded_dtype(info.scalar_type(), load_options);
    TS_CHECK_TYPE(dtype == constant.dtype, path, "tensor '", name, "' is ", dtype,
                  ", the package's constant '", constant.fqn, "' is ", constant.dtype,
                  " (LoadOptions::dtype casts floating-point tensors on load)");
    const std::vector<int64_t> file_sizes(info.shape.begin(), info.shape.end());
    const bool fits =
        constant.sizes
            ? file_sizes == *constant.sizes
            : static_cast<uint64_t>(info.numel()) * c10::elementSize(dtype) == constant.nbytes;
    if (!fits) {
      report.mismatched.push_back(
          {constant.fqn, constant.sizes.value_or(std::vector<int64_t>{}), file_sizes});
      TS_CHECK_VALUE(options.strict || present.count(constant.fqn), path, "tensor '", name,
                     "' has shape ", c10::IntArrayRef(file_sizes), ", the package's constant '",
                     constant.fqn, "' is ", describe_sizes(constant),
                     "; the package cannot run without it");
      continue;
    }
    file_names.push_back(name);
    loaded.push_back(&constant);
  }
  // A name the package does not take whose tensor equals one it does, byte for byte, is the other
  // name of a tied group saved under both (a plain state_dict): not unexpected, as in module loads.
  std::unordered_map<std::string, std::vector<std::string>> loaded_by_layout;
  const auto layout = [](const TensorInfo& info) {
    std::ostringstream key;
    key << int(info.dtype) << c10::IntArrayRef(info.shape.data(), info.shape.size());
    return key.str();
  };
  for (const auto& name : file_names)
    loaded_by_layout[layout(checkpoint.info(name))].push_back(name);
  for (const auto& name : checkpoint.keys()) {
    if (used.count(name)) continue;
    bool duplicate = false;
    if (const auto same = loaded_by_layout.find(layout(checkpoint.info(name)));
        same != loaded_by_layout.end()) {
      const RawTensor unused = checkpoint.raw(name);
      for (const auto& other : same->second) {
        const RawTensor kept = checkpoint.raw(other);
        if (at::equal(unused.bytes, kept.bytes)) {
          duplicate = true;
          break;
        }
      }
    }
    if (!duplicate) report.unexpected.push_back(name);
  }
  if (options.strict && !report.ok()) {
    std::ostringstream msg;
    msg << "cannot load into the AOTInductor package:";
    if (!report.missing.empty()) {
      msg << "\n  missing from the file: " << c10::Join(", ", report.missing)
          << " (a tied weight stored under another name: AotiLoadOptions::aliases)";
    }
    if (!report.unexpected.empty()) {
      msg << "\n  not taken by the package: " << c10::Join(", ", report.unexpected)
          << " (constants AOTInductor folded into its code keep their compiled-in values; "
             "compile with always_keep_tensor_constants=True, or load with strict=false)";
    }
    for (const auto& m : report.mismatched) {
      msg << "\n  shape mismatch: " << m.name << ": package " << c10::IntArrayRef(m.target_sizes)
          << ", file " << c10::IntArrayRef(m.file_sizes);
    }
    TS_FAIL(path, msg.str());
  }
  TS_CHECK_VALUE(cannot_run.empty(), path, "the file lacks ", c10::Join(", ", cannot_run),
                 ", which the package's ", options.inactive ? "inactive" : "active",
                 " constant buffer does not hold either; the package cannot run without them");

  // Read (zero-copy views on the CPU with the mmap backend), then hand over by FQN.
  const TensorDict tensors = checkpoint.tensors(file_names);
  std::unordered_map<std::string, at::Tensor> by_fqn;
  for (size_t i = 0; i < loaded.size(); ++i) {
    const AotiConstant& constant = *loaded[i];
    at::Tensor tensor = tensors[file_names[i]];
    // The package reads each constant with its compiled-in strides.
    if (constant.strides && *constant.strides != contiguous_strides(*constant.sizes)) {
      at::Tensor strided = at::empty_strided(*constant.sizes, *constant.strides, tensor.options());
      strided.copy_(tensor);
      tensor = std::move(strided);
    }
    // A copying package memcpy's the tensor's whole storage into its slot: give it exactly the
    // constant's bytes.
    if (options.copy && (tensor.storage_offset() != 0 ||
                         tensor.storage().nbytes() !=
                             static_cast<size_t>(tensor.numel()) * tensor.element_size())) {
      tensor = tensor.clone();
    }
    by_fqn.emplace(constant.fqn, std::move(tensor));
  }
  update_buffer(runner_of(package), options.inactive, !options.copy, [&] {
    package.load_constants(by_fqn, options.inactive, /*check_full_update=*/false,
                           /*user_managed=*/!options.copy);
  });
  return report;
}

void swap_constants(AOTIModelPackageLoader& package) { runner_of(package).swap_constant_buffer(); }

}  // namespace torch::safetensors
