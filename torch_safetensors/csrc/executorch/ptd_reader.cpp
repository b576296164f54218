// Reading .ptd files: the header and flatbuffer verified on open (flat_tensor.cpp), tensors as
// views of the source's memory or read from it, and the conversion back to safetensors.
#include <unordered_map>
#include <unordered_set>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>

#include "adapters/load_tensor.h"
#include "executorch/flat_tensor.h"
#include "storage/io.h"
#include "torch_safetensors/executorch.h"

namespace torch::safetensors {

struct PtdFile::Impl {
  std::shared_ptr<const Source> source;
  std::string owned_flatbuffer;  // when the source has no memory to view
  uint32_t version = 0;
  uint32_t num_segments = 0;
  std::vector<PtdTensorInfo> infos;
  std::unordered_map<std::string_view, size_t> by_key;  // views of infos[i].key
};

namespace {

std::shared_ptr<const PtdFile::Impl> open_ptd(std::shared_ptr<const Source> source) {
  auto impl = std::make_shared<PtdFile::Impl>();
  const std::string& name = source->name();
  const uint64_t size = source->size();
  std::string head(std::min<uint64_t>(size, ptd::kHeadBytes), '\0');
  source->read(head.data(), head.size(), 0);
  const ptd::Header header = ptd::parse_header(head, size, name);
  std::string_view flatbuffer;
  if (const uint8_t* data = source->data()) {
    flatbuffer = std::string_view(reinterpret_cast<const char*>(data), header.flatbuffer_end());
  } else {
    impl->owned_flatbuffer.resize(header.flatbuffer_end());
    source->read(impl->owned_flatbuffer.data(), impl->owned_flatbuffer.size(), 0);
    flatbuffer = impl->owned_flatbuffer;
  }
  ptd::Index index = ptd::parse_index(flatbuffer, header, name);
  impl->version = index.version;
  impl->num_segments = index.num_segments;
  impl->infos.reserve(index.entries.size());
  for (ptd::Entry& e : index.entries) {
    PtdTensorInfo info;
    info.key = std::move(e.key);
    info.dtype = e.dtype;
    info.executorch_scalar_type = e.scalar_type;
    info.sizes = std::move(e.sizes);
    info.dim_order = std::move(e.dim_order);
    info.has_layout = e.has_layout;
    info.segment = e.segment;
    info.offset = e.offset;
    info.nbytes = e.nbytes;
    impl->infos.push_back(std::move(info));
  }
  for (size_t i = 0; i < impl->infos.size(); ++i) impl->by_key.emplace(impl->infos[i].key, i);
  impl->source = std::move(source);
  return impl;
}

}  // namespace

PtdFile::PtdFile(const std::string& path, Backend backend)
    : impl_(open_ptd(file_source(path, backend == Backend::kMmap))) {}
PtdFile::PtdFile(std::shared_ptr<const Source> source) : impl_(open_ptd(std::move(source))) {}

const std::string& PtdFile::path() const { return impl_->source->name(); }
uint32_t PtdFile::version() const { return impl_->version; }
uint32_t PtdFile::num_segments() const { return impl_->num_segments; }
size_t PtdFile::size() const { return impl_->infos.size(); }

std::vector<std::string> PtdFile::keys() const {
  std::vector<std::string> keys;
  keys.reserve(impl_->infos.size());
  for (const PtdTensorInfo& info : impl_->infos) keys.push_back(info.key);
  return keys;
}

bool PtdFile::contains(std::string_view key) const { return impl_->by_key.count(key) != 0; }

const PtdTensorInfo& PtdFile::info(std::string_view key) const {
  auto it = impl_->by_key.find(key);
  PTD_CHECK(it != impl_->by_key.end(), path(), "no tensor named '", key, "' (the file has ",
            impl_->infos.size(), " keys)");
  return impl_->infos[it->second];
}

at::Tensor PtdFile::tensor(std::string_view key) const {
  const PtdTensorInfo& info = this->info(key);
  // dim_order lists the dimensions from outermost to innermost in memory: contiguous strides in
  // that order, given back to the logical dimensions.
  const size_t rank = info.sizes.size();
  std::vector<int64_t> strides(rank);
  int64_t stride = 1;
  for (size_t i = rank; i-- > 0;) {
    strides[info.dim_order[i]] = stride;
    stride *= std::max<int64_t>(info.sizes[info.dim_order[i]], 1);
  }
  const c10::ScalarType type = to_scalar_type(info.dtype);
  const Source& source = *impl_->source;
  if (uint8_t* data = source.data()) {
    at::Tensor view = adapters::view_memory(data + info.offset, info.nbytes, type, info.sizes,
                                            strides, impl_->source);
    if (view.defined()) return view;
  }
  at::Tensor out = at::empty_strided(info.sizes, strides, at::TensorOptions().dtype(type));
  if (info.nbytes > 0) source.read(out.data_ptr(), info.nbytes, info.offset);
  return out;
}

TensorDict PtdFile::tensors() const {
  TensorDict out;
  out.reserve(impl_->infos.size());
  for (const PtdTensorInfo& info : impl_->infos) out.insert(info.key, tensor(info.key));
  return out;
}

TensorDict load_ptd(const std::string& path) { return PtdFile(path).tensors(); }

size_t ptd_to_safetensors(const std::string& ptd_path, const SaveTo& to,
                          const std::optional<Metadata>& metadata) {
  const PtdFile ptd(ptd_path);
  NamedTensors tensors;
  tensors.reserve(ptd.size());
  // Keys sharing one segment (ExecuTorch may store equal data once) would be views of the same
  // bytes, which safetensors refuses to save: the later ones are copied.
  std::unordered_set<uint32_t> segments;
  for (const std::string& key : ptd.keys()) {
    at::Tensor tensor = ptd.tensor(key);
    if (!segments.insert(ptd.info(key).segment).second) tensor = tensor.clone();
    tensors.emplace_back(key, std::move(tensor));
  }
  save(tensors, to, metadata);
  return tensors.size();
}

bool is_ptd_file(const std::string& path) {
  if (!storage::is_regular_file(path)) return false;
  const auto source = file_source(path, /*mapped=*/false);
  if (source->size() < 8) return false;
  char head[8];
  source->read(head, sizeof(head), 0);
  return std::string_view(head + 4, 4) == ptd::kIdentifier;
}

}  // namespace torch::safetensors
