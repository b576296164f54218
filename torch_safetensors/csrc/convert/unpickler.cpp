#include "convert/unpickler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <ATen/ops/empty.h>
#include <ATen/ops/neg.h>
#include <c10/core/TensorOptions.h>

#include "check.h"
#include "convert/limits.h"

namespace torch::safetensors::convert {
namespace {

// What an allowed global does when the pickle calls it (REDUCE) or uses it as a value.
enum class Action {
  kOrderedDict,       // collections.OrderedDict() → an empty dict
  kRebuildTensorV2,   // (storage, offset, size, stride, requires_grad, hooks[, metadata])
  kRebuildTensorV3,   // the same with the dtype after the hooks (dtypes without a Storage type)
  kRebuildParameter,  // (tensor, requires_grad, hooks) → the tensor
  kRebuildParameterWithState,  // (tensor, requires_grad, hooks, state) → the tensor
  kTorchSize,                  // torch.Size(tuple) → the tuple
  kStorageType,                // torch.FloatStorage, ...: only inside a persistent id
  kDtype,                      // torch.float8_e4m3fn, ...: only as _rebuild_tensor_v3's argument
  kFirstArgument,              // TorchScript's type tags and typed lists: (value[, type]) → value
};

struct AllowedGlobal {
  const char* name;  // "module.name"
  Action action;
  c10::ScalarType dtype;
};

// The only globals the unpickler acts on: what torch.save writes for tensors in (ordered) dicts,
// and what TorchScript's pickler (torch/csrc/jit/serialization/pickler.cpp) wraps typed lists and
// dicts in. Everything else (builtins, numpy, torch._utils._rebuild_qtensor, sparse tensors, any
// class of user code) becomes an inert placeholder that is never imported or called.
constexpr c10::ScalarType kNoDtype = c10::ScalarType::Undefined;
constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections.OrderedDict", Action::kOrderedDict, kNoDtype},
    {"torch._utils._rebuild_tensor_v2", Action::kRebuildTensorV2, kNoDtype},
    {"torch._utils._rebuild_tensor_v3", Action::kRebuildTensorV3, kNoDtype},
    {"torch._utils._rebuild_parameter", Action::kRebuildParameter, kNoDtype},
    {"torch._utils._rebuild_parameter_with_state", Action::kRebuildParameterWithState, kNoDtype},
    {"torch.Size", Action::kTorchSize, kNoDtype},
    {"torch.FloatStorage", Action::kStorageType, c10::ScalarType::Float},
    {"torch.DoubleStorage", Action::kStorageType, c10::ScalarType::Double},
    {"torch.HalfStorage", Action::kStorageType, c10::ScalarType::Half},
    {"torch.BFloat16Storage", Action::kStorageType, c10::ScalarType::BFloat16},
    {"torch.ByteStorage", Action::kStorageType, c10::ScalarType::Byte},
    {"torch.CharStorage", Action::kStorageType, c10::ScalarType::Char},
    {"torch.ShortStorage", Action::kStorageType, c10::ScalarType::Short},
    {"torch.IntStorage", Action::kStorageType, c10::ScalarType::Int},
    {"torch.LongStorage", Action::kStorageType, c10::ScalarType::Long},
    {"torch.BoolStorage", Action::kStorageType, c10::ScalarType::Bool},
    {"torch.ComplexFloatStorage", Action::kStorageType, c10::ScalarType::ComplexFloat},
    {"torch.ComplexDoubleStorage", Action::kStorageType, c10::ScalarType::ComplexDouble},
    {"torch.UntypedStorage", Action::kStorageType, c10::ScalarType::Byte},
    {"torch.storage.UntypedStorage", Action::kStorageType, c10::ScalarType::Byte},
    {"torch.float32", Action::kDtype, c10::ScalarType::Float},
    {"torch.float", Action::kDtype, c10::ScalarType::Float},
    {"torch.float64", Action::kDtype, c10::ScalarType::Double},
    {"torch.double", Action::kDtype, c10::ScalarType::Double},
    {"torch.float16", Action::kDtype, c10::ScalarType::Half},
    {"torch.half", Action::kDtype, c10::ScalarType::Half},
    {"torch.bfloat16", Action::kDtype, c10::ScalarType::BFloat16},
    {"torch.uint8", Action::kDtype, c10::ScalarType::Byte},
    {"torch.int8", Action::kDtype, c10::ScalarType::Char},
    {"torch.int16", Action::kDtype, c10::ScalarType::Short},
    {"torch.short", Action::kDtype, c10::ScalarType::Short},
    {"torch.int32", Action::kDtype, c10::ScalarType::Int},
    {"torch.int", Action::kDtype, c10::ScalarType::Int},
    {"torch.int64", Action::kDtype, c10::ScalarType::Long},
    {"torch.long", Action::kDtype, c10::ScalarType::Long},
    {"torch.bool", Action::kDtype, c10::ScalarType::Bool},
    {"torch.uint16", Action::kDtype, c10::ScalarType::UInt16},
    {"torch.uint32", Action::kDtype, c10::ScalarType::UInt32},
    {"torch.uint64", Action::kDtype, c10::ScalarType::UInt64},
    {"torch.complex64", Action::kDtype, c10::ScalarType::ComplexFloat},
    {"torch.cfloat", Action::kDtype, c10::ScalarType::ComplexFloat},
    {"torch.complex128", Action::kDtype, c10::ScalarType::ComplexDouble},
    {"torch.cdouble", Action::kDtype, c10::ScalarType::ComplexDouble},
    {"torch.float8_e4m3fn", Action::kDtype, c10::ScalarType::Float8_e4m3fn},
    {"torch.float8_e5m2", Action::kDtype, c10::ScalarType::Float8_e5m2},
    {"torch.float8_e4m3fnuz", Action::kDtype, c10::ScalarType::Float8_e4m3fnuz},
    {"torch.float8_e5m2fnuz", Action::kDtype, c10::ScalarType::Float8_e5m2fnuz},
    {"torch.float8_e8m0fnu", Action::kDtype, c10::ScalarType::Float8_e8m0fnu},
    {"torch.float4_e2m1fn_x2", Action::kDtype, c10::ScalarType::Float4_e2m1fn_x2},
    {"torch.jit._pickle.restore_type_tag", Action::kFirstArgument, kNoDtype},
    {"torch.jit._pickle.build_intlist", Action::kFirstArgument, kNoDtype},
    {"torch.jit._pickle.build_tensorlist", Action::kFirstArgument, kNoDtype},
    {"torch.jit._pickle.build_doublelist", Action::kFirstArgument, kNoDtype},
    {"torch.jit._pickle.build_boollist", Action::kFirstArgument, kNoDtype},
};
constexpr int kNumAllowedGlobals = sizeof(kAllowedGlobals) / sizeof(kAllowedGlobals[0]);

// Bounds that keep hostile input cheap: deeper nesting than any state dict has, more dims than
// torch allows.
constexpr int kMaxFlattenDepth = 64;
constexpr size_t kMaxDims = 64;

const char* kind_name(PickleValue::Kind kind) {
  switch (kind) {
    case PickleValue::Kind::kNone:
      return "None";
    case PickleValue::Kind::kBool:
      return "a bool";
    case PickleValue::Kind::kInt:
      return "an int";
    case PickleValue::Kind::kFloat:
      return "a float";
    case PickleValue::Kind::kString:
      return "a string";
    case PickleValue::Kind::kTuple:
      return "a tuple";
    case PickleValue::Kind::kList:
      return "a list";
    case PickleValue::Kind::kDict:
      return "a dict";
    case PickleValue::Kind::kGlobal:
      return "a global";
    case PickleValue::Kind::kStorage:
      return "a storage";
    case PickleValue::Kind::kTensor:
      return "a tensor";
    case PickleValue::Kind::kBytes:
      return "bytes";
    case PickleValue::Kind::kSet:
      return "a set";
    case PickleValue::Kind::kObject:
      return "an object";
  }
  return "a value";
}

class Machine {
 public:
  // `legacy` set: the legacy format's persistent ids, and STOP may end early, setting `*end`.
  Machine(std::string_view bytes, const StorageLoader& load_storage, const std::string& name,
          std::deque<PickleValue>& arena, std::deque<PickleValue::ObjectParts>& object_parts,
          const LegacyStorageLoader* legacy = nullptr, size_t* end = nullptr)
      : bytes_(bytes),
        load_storage_(load_storage),
        legacy_(legacy),
        end_(end),
        name_(name),
        arena_(arena),
        object_parts_(object_parts),
        budget_(std::min(kMaxUnpicklerBytes,
                         kUnpicklerBaseBytes + kUnpicklerBytesPerPickleByte * bytes.size())) {
    // None, True and False are immutable: one value each, however many the program pushes.
    none_ = make(PickleValue::Kind::kNone);
    true_ = make(PickleValue::Kind::kBool);
    true_->boolean = true;
    false_ = make(PickleValue::Kind::kBool);
  }

  PickleValue* run();

 private:
  // Input.
  const uint8_t* take(size_t n) {
    TS_CHECK(n <= bytes_.size() - position_, name_, "pickle truncated: opcode at offset ",
             opcode_offset_, " needs ", n, " more bytes, found ", bytes_.size() - position_);
    const auto* data = reinterpret_cast<const uint8_t*>(bytes_.data()) + position_;
    position_ += n;
    return data;
  }
  uint64_t little_endian(size_t n) {
    const uint8_t* data = take(n);
    uint64_t value = 0;
    for (size_t i = 0; i < n; ++i) value |= uint64_t(data[i]) << (8 * i);
    return value;
  }
  std::string_view text(uint64_t n) {
    TS_CHECK(n <= bytes_.size() - position_, name_, "pickle truncated: a string at offset ",
             opcode_offset_, " of ", n, " bytes, found ", bytes_.size() - position_);
    return {reinterpret_cast<const char*>(take(size_t(n))), size_t(n)};
  }
  std::string_view line() {
    const size_t end = bytes_.find('\n', position_);
    TS_CHECK(end != std::string_view::npos, name_, "pickle truncated: GLOBAL at offset ",
             opcode_offset_, " has no end of line");
    std::string_view result = bytes_.substr(position_, end - position_);
    if (result.size() > kMaxStringBytes) fail("a GLOBAL name longer than a name can be");
    position_ = end + 1;
    return result;
  }

  // Every allocation the program causes is charged to the budget (limits.h).
  void charge(uint64_t bytes) {
    charged_ += bytes;
    if (charged_ > budget_) {
      fail("the pickle builds more than the " + std::to_string(budget_) +
           " bytes of values its size allows (" + std::to_string(kUnpicklerBytesPerPickleByte) +
           " per byte of data.pkl plus " + std::to_string(kUnpicklerBaseBytes) + ", at most " +
           std::to_string(kMaxUnpicklerBytes) + "): not a tensor checkpoint");
    }
  }
  void push(PickleValue* value) {
    if (stack_.size() >= kMaxStackDepth) {
      fail("the stack is deeper than " + std::to_string(kMaxStackDepth) + " values");
    }
    stack_.push_back(value);
  }

  // Values.
  PickleValue* make(PickleValue::Kind kind) {
    charge(sizeof(PickleValue));
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  PickleValue* make_object(std::string qualified_name, bool called) {
    PickleValue* v = make(PickleValue::Kind::kObject);
    charge(sizeof(PickleValue::ObjectParts) + qualified_name.size());
    object_parts_.emplace_back();
    v->parts = &object_parts_.back();
    v->text = std::move(qualified_name);
    v->called = called;
    return v;
  }
  PickleValue* make_int(int64_t value) {
    PickleValue* v = make(PickleValue::Kind::kInt);
    v->integer = value;
    return v;
  }

  // Stack.
  [[noreturn]] void fail(const std::string& what) const {
    TS_FAIL(name_, "pickle opcode ", opcode_name_, " at offset ", opcode_offset_, ": ", what);
  }
  size_t frame_begin() const { return marks_.empty() ? 0 : marks_.back(); }
  PickleValue* pop() {
    if (stack_.size() <= frame_begin()) fail("needs a value, the stack is empty");
    PickleValue* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  PickleValue* top() {
    if (stack_.size() <= frame_begin()) fail("needs a value, the stack is empty");
    return stack_.back();
  }
  // The values pushed since the last MARK, which is removed.
  std::vector<PickleValue*> pop_to_mark() {
    if (marks_.empty()) fail("needs a MARK, none is open");
    const size_t begin = marks_.back();
    marks_.pop_back();
    std::vector<PickleValue*> items(stack_.begin() + begin, stack_.end());
    stack_.resize(begin);
    charge(items.size() * sizeof(PickleValue*));
    return items;
  }
  PickleValue* pop_tuple(size_t n) {
    PickleValue* tuple = make(PickleValue::Kind::kTuple);
    charge(n * sizeof(PickleValue*));
    tuple->items.resize(n);
    for (size_t i = n; i-- > 0;) tuple->items[i] = pop();
    return tuple;
  }

  void set_item(PickleValue& dict, PickleValue* key, PickleValue* value) {
    if (dict.kind == PickleValue::Kind::kObject) {  // a dict subclass's items: kept, in order
      charge(sizeof(std::pair<PickleValue*, PickleValue*>));
      dict.entries.emplace_back(key, value);
      return;
    }
    if (dict.kind != PickleValue::Kind::kDict) fail("sets an item on " + describe(dict));
    // Python's dict semantics: a string key set twice keeps its place and takes the new value.
    if (key->kind == PickleValue::Kind::kString) {
      auto& index = dict_index_[&dict];
      charge(key->text.size() + 64);  // a node of the index, about
      auto [it, inserted] = index.emplace(key->text, dict.entries.size());
      if (!inserted) {
        dict.entries[it->second].second = value;
        return;
      }
    }
    charge(sizeof(std::pair<PickleValue*, PickleValue*>));
    dict.entries.emplace_back(key, value);
  }
  void append(PickleValue& list, PickleValue* item) {
    charge(sizeof(PickleValue*));
    if (list.kind == PickleValue::Kind::kObject) {  // a list subclass's items
      list.parts->appended.push_back(item);
      return;
    }
    if (list.kind != PickleValue::Kind::kList) fail("appends to " + describe(list));
    list.items.push_back(item);
  }
  // What calling (REDUCE, NEWOBJ) a placeholder makes: another one, keeping the arguments.
  PickleValue* placeholder_call(const PickleValue& callable,
                                const std::vector<PickleValue*>& args) {
    PickleValue* object = make_object(callable.text, /*called=*/true);
    charge(args.size() * sizeof(PickleValue*));
    object->items = args;
    return object;
  }
  // A string or bytes value of `length` bytes read from the program, refused past `limit`: "a
  // <noun> of N bytes, more than the <limit> <bound>".
  PickleValue* bounded_text(PickleValue::Kind kind, uint64_t length, uint64_t limit,
                            const char* noun, const char* bound) {
    if (length > limit) {
      fail(std::string("a ") + noun + " of " + std::to_string(length) + " bytes, more than the " +
           std::to_string(limit) + " " + bound);
    }
    PickleValue* v = make(kind);
    charge(length);
    v->text = std::string(text(length));
    return v;
  }
  PickleValue* bytes_value(uint64_t length) {
    return bounded_text(PickleValue::Kind::kBytes, length, kMaxBytesValue, "bytes value",
                        "a checkpoint's non-tensor value may have");
  }

  PickleValue* global(std::string_view module, std::string_view attribute);
  PickleValue* persistent_load(const PickleValue& id);
  PickleValue* legacy_view(const std::string& root_key, PickleValue* root,
                           const PickleValue& metadata, c10::ScalarType dtype);
  PickleValue* call(const PickleValue& callable, const PickleValue& args);
  PickleValue* rebuild_tensor(const PickleValue& args, bool has_dtype);
  void memoize(uint64_t index, PickleValue* value) {
    auto [it, inserted] = memo_.emplace(index, value);
    if (inserted) {
      if (memo_.size() > kMaxMemoEntries) {
        fail("the memo holds more than " + std::to_string(kMaxMemoEntries) + " entries");
      }
      charge(48);  // a node of the memo, about
    }
    it->second = value;
  }
  void check_hooks(const PickleValue& hooks, const std::string& function);
  void apply_tensor_metadata(const PickleValue& metadata, PickleValue& tensor,
                             const std::string& function);
  int64_t int_argument(const PickleValue& value, const char* what);
  std::vector<int64_t> ints_argument(const PickleValue& value, const char* what);

  std::string_view bytes_;
  const StorageLoader& load_storage_;
  const LegacyStorageLoader* legacy_;
  size_t* end_;
  const std::string& name_;
  std::deque<PickleValue>& arena_;
  std::deque<PickleValue::ObjectParts>& object_parts_;
  size_t position_ = 0;
  size_t opcode_offset_ = 0;
  std::string opcode_name_;
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue*> memo_;
  std::unordered_map<std::string, PickleValue*> storages_;  // by key: one storage per record
  struct LegacyView {
    std::string root_key;
    int64_t offset, numel;
    PickleValue* storage;
  };
  std::unordered_map<std::string, LegacyView> legacy_views_;  // by view key
  std::unordered_map<const PickleValue*, std::unordered_map<std::string, size_t>> dict_index_;
  uint64_t budget_;
  uint64_t charged_ = 0;
  PickleValue* none_ = nullptr;
  PickleValue* true_ = nullptr;
  PickleValue* false_ = nullptr;
};

PickleValue* Machine::global(std::string_view module, std::string_view attribute) {
  std::string qualified = std::string(module) + "." + std::string(attribute);
  for (int i = 0; i < kNumAllowedGlobals; ++i) {
    if (qualified == kAllowedGlobals[i].name) {
      PickleValue* v = make(PickleValue::Kind::kGlobal);
      v->text = std::move(qualified);
      v->global_id = i;
      v->dtype = kAllowedGlobals[i].dtype;
      return v;
    }
  }
  // Any other global: an inert stand-in keeping only its name (nothing is imported).
  return make_object(std::move(qualified), /*called=*/false);
}

int64_t Machine::int_argument(const PickleValue& value, const char* what) {
  if (value.kind != PickleValue::Kind::kInt) {
    fail(std::string("expected ") + what + " to be an int, found " + describe(value));
  }
  return value.integer;
}

std::vector<int64_t> Machine::ints_argument(const PickleValue& value, const char* what) {
  if (value.kind != PickleValue::Kind::kTuple && value.kind != PickleValue::Kind::kList) {
    fail(std::string("expected ") + what + " to be a tuple of ints, found " + describe(value));
  }
  if (value.items.size() > kMaxDims) {
    fail(std::string(what) + " has " + std::to_string(value.items.size()) + " entries, more than " +
         std::to_string(kMaxDims));
  }
  std::vector<int64_t> ints;
  for (const PickleValue* item : value.items) ints.push_back(int_argument(*item, what));
  return ints;
}

PickleValue* Machine::persistent_load(const PickleValue& id) {
  // torch.save's persistent id: ("storage", storage type, key, location, numel), and the view
  // metadata after them in the legacy format.
  if (id.kind != PickleValue::Kind::kTuple || id.items.size() != (legacy_ ? 6 : 5) ||
      id.items[0]->kind != PickleValue::Kind::kString || id.items[0]->text != "storage") {
    fail(std::string("expected a persistent id ('storage', type, key, location, numel") +
         (legacy_ ? ", view)" : ")") + ", found " + describe(id));
  }
  const PickleValue& type = *id.items[1];
  if (type.kind != PickleValue::Kind::kGlobal ||
      kAllowedGlobals[type.global_id].action != Action::kStorageType) {
    fail("expected a storage type in the persistent id, found " + describe(type));
  }
  if (legacy_ && type.text.find("UntypedStorage") != std::string::npos) {
    fail("the legacy format names " + type.text +
         ", whose dtype it does not record (torch.load cannot read this file either; torch "
         "writes it for dtypes without a legacy storage type): re-save with the zip format");
  }
  const PickleValue& key = *id.items[2];
  if (key.kind != PickleValue::Kind::kString) {
    fail("expected the storage key to be a string, found " + describe(key));
  }
  const int64_t numel = int_argument(*id.items[4], "the storage's element count");
  if (numel < 0) fail("storage '" + key.text + "' has a negative element count");
  const uint64_t element_size = c10::elementSize(type.dtype);
  if (uint64_t(numel) > std::numeric_limits<uint64_t>::max() / element_size) {
    fail("storage '" + key.text + "' is too large");
  }
  const uint64_t nbytes = uint64_t(numel) * element_size;
  if (legacy_ && legacy_views_.count(key.text) != 0) {
    fail("storage key '" + key.text + "' is also the key of a storage view");
  }
  auto [it, inserted] = storages_.emplace(key.text, nullptr);
  if (!inserted) {
    // The same record named twice (torch.save memoizes, but a pickle need not): one storage.
    if (it->second->storage.nbytes() != nbytes) {
      fail("storage '" + key.text + "' is named twice with different sizes");
    }
    return legacy_ ? legacy_view(key.text, it->second, *id.items[5], type.dtype) : it->second;
  }
  PickleValue* storage = make(PickleValue::Kind::kStorage);
  storage->dtype = type.dtype;
  storage->storage =
      legacy_ ? (*legacy_)(key.text, nbytes, type.dtype) : load_storage_(key.text, nbytes);
  TS_CHECK(storage->storage.nbytes() == nbytes, name_, "storage '", key.text, "' has ",
           storage->storage.nbytes(), " bytes, expected ", nbytes);
  it->second = storage;
  return legacy_ ? legacy_view(key.text, storage, *id.items[5], type.dtype) : storage;
}

// The storage deleter's context for a view: its root storage stays alive while the view does.
void release_root_storage(void* context) { delete static_cast<c10::Storage*>(context); }

// A legacy persistent id's view metadata: None (the root itself), or (view key, offset, numel) in
// elements of `dtype`, as torch's _legacy_load slices the root's bytes (where torch would clamp a
// slice past the end, this is an error).
PickleValue* Machine::legacy_view(const std::string& root_key, PickleValue* root,
                                  const PickleValue& metadata, c10::ScalarType dtype) {
  if (metadata.kind == PickleValue::Kind::kNone) return root;
  if (metadata.kind != PickleValue::Kind::kTuple || metadata.items.size() != 3 ||
      metadata.items[0]->kind != PickleValue::Kind::kString) {
    fail("expected storage '" + root_key +
         "''s view metadata to be None or (view key, offset, numel), found " + describe(metadata));
  }
  const std::string& view_key = metadata.items[0]->text;
  const int64_t offset = int_argument(*metadata.items[1], "the storage view's offset");
  const int64_t numel = int_argument(*metadata.items[2], "the storage view's element count");
  const uint64_t element_size = c10::elementSize(dtype);
  const uint64_t elements = root->storage.nbytes() / element_size;
  if (offset < 0 || numel < 0 || uint64_t(offset) > elements ||
      uint64_t(numel) > elements - uint64_t(offset)) {
    fail("storage view '" + view_key + "' covers elements " + std::to_string(offset) + " to " +
         std::to_string(offset) + " + " + std::to_string(numel) + " of storage '" + root_key +
         "', which has " + std::to_string(elements) + " " + c10::toString(dtype) + " elements");
  }
  if (storages_.count(view_key) != 0) {
    fail("storage view key '" + view_key + "' is also the key of a storage");
  }
  auto [it, inserted] =
      legacy_views_.emplace(view_key, LegacyView{root_key, offset, numel, nullptr});
  const LegacyView& view = it->second;
  if (!inserted) {
    if (view.root_key != root_key || view.offset != offset || view.numel != numel) {
      fail("storage view '" + view_key + "' is named twice, as different slices");
    }
    return view.storage;
  }
  charge(view_key.size() + sizeof(LegacyView) + 64);
  PickleValue* storage = make(PickleValue::Kind::kStorage);
  storage->dtype = dtype;
  const c10::Storage& whole = root->storage;
  auto* base = static_cast<uint8_t*>(whole.data_ptr().get());
  c10::DataPtr data(nullptr, c10::Device(c10::kCPU));  // no data yet (a first pass), or none
  if (base != nullptr) {
    data = c10::DataPtr(base + uint64_t(offset) * element_size, new c10::Storage(whole),
                        &release_root_storage, c10::Device(c10::kCPU));
  }
  storage->storage = c10::Storage(c10::Storage::use_byte_size_t(), uint64_t(numel) * element_size,
                                  std::move(data), nullptr, /*resizable=*/false);
  it->second.storage = storage;
  return storage;
}

PickleValue* Machine::rebuild_tensor(const PickleValue& args, bool has_dtype) {
  const char* function = has_dtype ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2";
  const size_t required = has_dtype ? 7 : 6;
  if (args.items.size() != required && args.items.size() != required + 1) {
    fail(std::string(function) + " expects " + std::to_string(required) + " or " +
         std::to_string(required + 1) + " arguments, found " + std::to_string(args.items.size()));
  }
  const PickleValue& storage = *args.items[0];
  if (storage.kind != PickleValue::Kind::kStorage) {
    fail(std::string(function) + " expects a storage, found " + describe(storage));
  }
  c10::ScalarType dtype = storage.dtype;
  if (has_dtype) {
    const PickleValue& dtype_value = *args.items[6];
    if (dtype_value.kind != PickleValue::Kind::kGlobal ||
        kAllowedGlobals[dtype_value.global_id].action != Action::kDtype) {
      fail("_rebuild_tensor_v3 expects a torch dtype, found " + describe(dtype_value));
    }
    dtype = dtype_value.dtype;
  }
  const int64_t offset = int_argument(*args.items[1], "the storage offset");
  const std::vector<int64_t> sizes = ints_argument(*args.items[2], "the size");
  const std::vector<int64_t> strides = ints_argument(*args.items[3], "the stride");
  if (sizes.size() != strides.size()) {
    fail("the size has " + std::to_string(sizes.size()) + " dims and the stride " +
         std::to_string(strides.size()));
  }
  // The tensor must lie inside its storage: offset + sum((size - 1) * stride) < elements.
  if (offset < 0) fail("negative storage offset " + std::to_string(offset));
  bool empty = false;
  uint64_t last = uint64_t(offset);
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) {
      fail("negative size or stride in dim " + std::to_string(d));
    }
    if (sizes[d] == 0) empty = true;
  }
  const uint64_t element_size = c10::elementSize(dtype);
  const uint64_t elements = storage.storage.nbytes() / element_size;
  // Stride-0 dims (an expanded tensor) may name more elements than the storage holds, but never
  // more bytes than a tensor can have.
  uint64_t numel = 1;
  for (const int64_t size : sizes) {
    if (__builtin_mul_overflow(numel, uint64_t(size), &numel) ||
        numel > uint64_t(std::numeric_limits<int64_t>::max()) / element_size) {
      fail("a tensor of size " + c10::str(sizes) + " has more bytes than a tensor can have");
    }
  }
  if (!empty) {
    for (size_t d = 0; d < sizes.size(); ++d) {
      uint64_t step = 0;
      if (__builtin_mul_overflow(uint64_t(sizes[d] - 1), uint64_t(strides[d]), &step) ||
          __builtin_add_overflow(last, step, &last)) {
        fail("the tensor's extent overflows");
      }
    }
    if (last >= elements) {
      fail("a tensor of size " + c10::str(sizes) + ", stride " + c10::str(strides) +
           " and offset " + std::to_string(offset) + " reaches element " + std::to_string(last) +
           " of a storage of " + std::to_string(elements) + " " + c10::toString(dtype) +
           " elements");
    }
  } else if (uint64_t(offset) > elements) {
    fail("storage offset " + std::to_string(offset) + " is past the storage's " +
         std::to_string(elements) + " elements");
  }
  if (args.items[4]->kind != PickleValue::Kind::kBool) {
    fail(std::string(function) + " expects requires_grad to be a bool, found " +
         describe(*args.items[4]));
  }
  check_hooks(*args.items[5], function);
  PickleValue* tensor = make(PickleValue::Kind::kTensor);
  tensor->tensor = at::empty({0}, c10::TensorOptions().dtype(dtype));
  tensor->tensor.set_(storage.storage, offset, sizes, strides);
  if (args.items.size() == required + 1)
    apply_tensor_metadata(*args.items[required], *tensor, function);
  return tensor;
}

// torch.save writes an empty OrderedDict for a tensor's backward hooks; hooks themselves are
// Python functions, which no tensor file can carry.
void Machine::check_hooks(const PickleValue& hooks, const std::string& function) {
  if (hooks.kind != PickleValue::Kind::kDict || !hooks.entries.empty()) {
    fail(function + " expects the backward hooks to be an empty OrderedDict, found " +
         describe(hooks) + (hooks.kind == PickleValue::Kind::kDict ? " of entries" : ""));
  }
}

// The metadata torch writes for a tensor (torch._utils.get_tensor_metadata): {'neg': True} for a
// negative view, {'conj': True} for a conjugate one. Each is honoured; any other key, or a value
// other than a bool, is refused by name rather than dropped.
void Machine::apply_tensor_metadata(const PickleValue& metadata, PickleValue& tensor,
                                    const std::string& function) {
  if (metadata.kind == PickleValue::Kind::kNone) return;
  if (metadata.kind != PickleValue::Kind::kDict) {
    fail(function + " expects its metadata to be a dict, found " + describe(metadata));
  }
  for (const auto& [key, value] : metadata.entries) {
    const bool known =
        key->kind == PickleValue::Kind::kString && (key->text == "neg" || key->text == "conj");
    if (!known) {
      fail(function + "'s metadata has the key " + describe(*key) +
           ", which this converter does not know how to honour (it knows 'neg' and 'conj')");
    }
    // torch.save writes only True; torch.load sets the bit for the key whatever its value, so
    // anything else has no one meaning.
    if (value != true_) {
      fail(function + "'s metadata '" + key->text + "' is " + describe(*value) +
           ", expected True (torch.save writes only True, and torch.load sets the bit whatever "
           "the value)");
    }
    if (key->text == "neg") {
      tensor.negative = true;
    } else {
      if (!c10::isComplexType(tensor.tensor.scalar_type())) {
        fail(function + "'s metadata marks a " + c10::toString(tensor.tensor.scalar_type()) +
             " tensor as conjugated; only complex tensors have a conjugate");
      }
      tensor.conjugate = true;
    }
  }
}

PickleValue* Machine::call(const PickleValue& callable, const PickleValue& args) {
  const bool placeholder = callable.kind == PickleValue::Kind::kObject;
  if (callable.kind != PickleValue::Kind::kGlobal && !placeholder) {
    fail("calls " + describe(callable));
  }
  if (args.kind != PickleValue::Kind::kTuple) {
    fail("expected a tuple of arguments for " + callable.text + ", found " + describe(args));
  }
  if (placeholder) return placeholder_call(callable, args.items);  // never run
  switch (kAllowedGlobals[callable.global_id].action) {
    case Action::kOrderedDict:
      if (!args.items.empty()) fail("collections.OrderedDict is called with arguments");
      return make(PickleValue::Kind::kDict);
    case Action::kRebuildTensorV2:
      return rebuild_tensor(args, false);
    case Action::kRebuildTensorV3:
      return rebuild_tensor(args, true);
    case Action::kRebuildParameter:
    case Action::kRebuildParameterWithState: {
      const size_t expected =
          kAllowedGlobals[callable.global_id].action == Action::kRebuildParameter ? 3 : 4;
      if (args.items.size() != expected || args.items[0]->kind != PickleValue::Kind::kTensor) {
        fail(callable.text + " expects a tensor and " + std::to_string(expected - 1) +
             " more arguments");
      }
      if (args.items[1]->kind != PickleValue::Kind::kBool) {
        fail(callable.text + " expects requires_grad to be a bool, found " +
             describe(*args.items[1]));
      }
      check_hooks(*args.items[2], callable.text);
      // The state torch writes for a Parameter with Python attributes (its __dict__, or a
      // (__dict__, slots) tuple): attributes a safetensors file cannot carry, refused by name.
      if (expected == 4) {
        const PickleValue& state = *args.items[3];
        const bool empty = state.kind == PickleValue::Kind::kNone ||
                           (state.kind == PickleValue::Kind::kDict && state.entries.empty());
        if (!empty) {
          std::string names;
          if (state.kind == PickleValue::Kind::kDict) {
            for (const auto& entry : state.entries) {
              names += (names.empty() ? "" : ", ") + describe(*entry.first);
              if (names.size() > 200) break;
            }
          }
          fail(callable.text + ": the parameter has Python attributes (" +
               (names.empty() ? describe(state) : names) +
               "), which a safetensors file cannot store; delete them before saving");
        }
      }
      return args.items[0];  // a parameter is saved as its data
    }
    case Action::kTorchSize:
      if (args.items.size() != 1 || args.items[0]->kind != PickleValue::Kind::kTuple) {
        fail("torch.Size expects one tuple");
      }
      return args.items[0];
    case Action::kFirstArgument:
      if (args.items.empty() || args.items.size() > 2) {
        fail(callable.text + " expects a value and at most a type, found " +
             std::to_string(args.items.size()) + " arguments");
      }
      return args.items[0];
    case Action::kStorageType:
    case Action::kDtype:
      break;
  }
  fail("calls " + callable.text + ", which is not callable here");
}

PickleValue* Machine::run() {
  while (true) {
    opcode_offset_ = position_;
    const uint8_t opcode = *take(1);
    opcode_name_ = "'" + std::string(1, char(opcode)) + "'";
    if (opcode < 0x20 || opcode >= 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", opcode);
      opcode_name_ = hex;
    }
    switch (opcode) {
      case 0x80: {  // PROTO
        const uint8_t protocol = *take(1);
        if (protocol < 2 || protocol > 5) fail("pickle protocol " + std::to_string(protocol));
        break;
      }
      case 0x95:  // FRAME: a length hint only
        take(8);
        break;
      case '.': {  // STOP: exactly the result is left, and nothing follows
        PickleValue* result = pop();
        if (!stack_.empty() || !marks_.empty()) {
          fail("the program leaves " + std::to_string(stack_.size()) + " more value(s) and " +
               std::to_string(marks_.size()) + " mark(s) on the stack: not one pickled value");
        }
        if (end_ != nullptr) {
          *end_ = position_;
        } else if (position_ != bytes_.size()) {
          fail(std::to_string(bytes_.size() - position_) + " bytes follow STOP");
        }
        return result;
      }
      case '(':  // MARK
        if (marks_.size() >= kMaxMarkDepth) {
          fail("more than " + std::to_string(kMaxMarkDepth) + " MARKs are open");
        }
        marks_.push_back(stack_.size());
        break;
      case '0':  // POP
        pop();
        break;
      case '1':  // POP_MARK
        pop_to_mark();
        break;
      case '2':  // DUP
        push(top());
        break;
      case 'N':  // NONE
        push(none_);
        break;
      case 0x88:  // NEWTRUE
        push(true_);
        break;
      case 0x89:  // NEWFALSE
        push(false_);
        break;
      case 'J':  // BININT
        push(make_int(int32_t(uint32_t(little_endian(4)))));
        break;
      case 'K':  // BININT1
        push(make_int(int64_t(little_endian(1))));
        break;
      case 'M':  // BININT2
        push(make_int(int64_t(little_endian(2))));
        break;
      case 0x8a: {  // LONG1: n bytes of two's complement, little-endian
        const uint8_t n = *take(1);
        if (n > 8) fail("an integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
        uint64_t value = little_endian(n);
        if (n > 0 && n < 8 && (value >> (8 * n - 1)) & 1) value |= ~uint64_t(0) << (8 * n);
        push(make_int(int64_t(value)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        const uint8_t* data = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | data[i];
        PickleValue* v = make(PickleValue::Kind::kFloat);
        std::memcpy(&v->real, &bits, sizeof(bits));
        push(v);
        break;
      }
      case 'X':     // BINUNICODE
      case 0x8c:    // SHORT_BINUNICODE
      case 0x8d: {  // BINUNICODE8
        const size_t width = opcode == 'X' ? 4 : opcode == 0x8c ? 1 : 8;
        push(bounded_text(PickleValue::Kind::kString, little_endian(width), kMaxStringBytes,
                          "string", "a name or key of a tensor checkpoint needs"));
        break;
      }
      case '}':  // EMPTY_DICT
        push(make(PickleValue::Kind::kDict));
        break;
      case 'C':     // SHORT_BINBYTES
      case 'B':     // BINBYTES
      case 0x8e:    // BINBYTES8
      case 0x96: {  // BYTEARRAY8
        const size_t width = opcode == 'C' ? 1 : opcode == 'B' ? 4 : 8;
        push(bytes_value(little_endian(width)));
        break;
      }
      case 0x8f:  // EMPTY_SET
        push(make(PickleValue::Kind::kSet));
        break;
      case 0x90: {  // ADDITEMS
        std::vector<PickleValue*> items = pop_to_mark();
        PickleValue* set = top();
        if (set->kind != PickleValue::Kind::kSet) fail("adds items to " + describe(*set));
        set->items.insert(set->items.end(), items.begin(), items.end());
        break;
      }
      case 0x91: {  // FROZENSET
        PickleValue* set = make(PickleValue::Kind::kSet);
        set->items = pop_to_mark();
        push(set);
        break;
      }
      case ']':  // EMPTY_LIST
        push(make(PickleValue::Kind::kList));
        break;
      case ')':  // EMPTY_TUPLE
        push(make(PickleValue::Kind::kTuple));
        break;
      case 0x85:  // TUPLE1
      case 0x86:  // TUPLE2
      case 0x87:  // TUPLE3
        push(pop_tuple(opcode - 0x85 + 1));
        break;
      case 't': {  // TUPLE
        PickleValue* tuple = make(PickleValue::Kind::kTuple);
        tuple->items = pop_to_mark();
        push(tuple);
        break;
      }
      case 'l': {  // LIST
        PickleValue* list = make(PickleValue::Kind::kList);
        list->items = pop_to_mark();
        push(list);
        break;
      }
      case 'd': {  // DICT
        std::vector<PickleValue*> items = pop_to_mark();
        if (items.size() % 2 != 0) fail("an odd number of keys and values");
        PickleValue* dict = make(PickleValue::Kind::kDict);
        for (size_t i = 0; i < items.size(); i += 2) set_item(*dict, items[i], items[i + 1]);
        push(dict);
        break;
      }
      case 's': {  // SETITEM
        PickleValue* value = pop();
        PickleValue* key = pop();
        set_item(*top(), key, value);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<PickleValue*> items = pop_to_mark();
        if (items.size() % 2 != 0) fail("an odd number of keys and values");
        PickleValue* dict = top();
        for (size_t i = 0; i < items.size(); i += 2) set_item(*dict, items[i], items[i + 1]);
        break;
      }
      case 'a': {  // APPEND
        PickleValue* item = pop();
        append(*top(), item);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<PickleValue*> items = pop_to_mark();
        PickleValue* list = top();
        for (PickleValue* item : items) append(*list, item);
        break;
      }
      case 'q':  // BINPUT
      case 'r':  // LONG_BINPUT
        memoize(little_endian(opcode == 'q' ? 1 : 4), top());
        break;
      case 0x94:  // MEMOIZE
        memoize(memo_.size(), top());
        break;
      case 'h':    // BINGET
      case 'j': {  // LONG_BINGET
        const uint64_t index = little_endian(opcode == 'h' ? 1 : 4);
        auto it = memo_.find(index);
        if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " was never set");
        push(it->second);
        break;
      }
      case 'c': {  // GLOBAL: "module\nname\n"
        const std::string_view module = line();
        const std::string_view attribute = line();
        push(global(module, attribute));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PickleValue* attribute = pop();
        PickleValue* module = pop();
        if (module->kind != PickleValue::Kind::kString ||
            attribute->kind != PickleValue::Kind::kString) {
          fail("expected two strings");
        }
        push(global(module->text, attribute->text));
        break;
      }
      case 'R': {  // REDUCE
        PickleValue* args = pop();
        PickleValue* callable = pop();
        push(call(*callable, *args));
        break;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args), only ever for a placeholder
        PickleValue* args = pop();
        PickleValue* cls = pop();
        if (cls->kind != PickleValue::Kind::kObject) fail("instantiates " + describe(*cls));
        if (args->kind != PickleValue::Kind::kTuple) {
          fail("expected a tuple of arguments for " + cls->text + ", found " + describe(*args));
        }
        push(placeholder_call(*cls, args->items));
        break;
      }
      case 0x92: {  // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
        PickleValue* kwargs = pop();
        PickleValue* args = pop();
        PickleValue* cls = pop();
        if (cls->kind != PickleValue::Kind::kObject) fail("instantiates " + describe(*cls));
        if (args->kind != PickleValue::Kind::kTuple || kwargs->kind != PickleValue::Kind::kDict) {
          fail("expected a tuple of arguments and a dict of keyword arguments for " + cls->text);
        }
        std::vector<PickleValue*> all = args->items;
        all.push_back(kwargs);
        push(placeholder_call(*cls, all));
        break;
      }
      case 'b': {  // BUILD: a placeholder keeps its states; an OrderedDict's (a state_dict's
                   // _metadata) are dropped
        PickleValue* state = pop();
        PickleValue* object = top();
        if (object->kind == PickleValue::Kind::kObject) {
          charge(sizeof(PickleValue*));
          object->parts->states.push_back(state);
          break;
        }
        if (object->kind != PickleValue::Kind::kDict) {
          fail("sets the state of " + describe(*object) +
               "; only dicts' and objects' states are "
               "accepted");
        }
        break;
      }
      case 'Q':  // BINPERSID
        push(persistent_load(*pop()));
        break;
      default:
        fail(
            "this opcode is not one a tensor checkpoint uses (accepted: protocol 2-5 "
            "containers, strings, bytes, numbers, GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID)");
    }
  }
}

// The tensor a pickled tensor value stands for: its view, after the size check, with torch's
// negation and conjugation bits applied (materialized, once per value so that ties stay ties).
struct FlattenState {
  const std::string& name;
  std::unordered_set<std::string> seen;
  std::unordered_map<const PickleValue*, at::Tensor> resolved;
  std::vector<std::pair<std::string, at::Tensor>> out;
};

at::Tensor resolve_tensor(const PickleValue& value, const std::string& path, FlattenState& state) {
  auto it = state.resolved.find(&value);
  if (it != state.resolved.end()) return it->second;
  const at::Tensor& view = value.tensor;
  const uint64_t storage_bytes = view.storage().nbytes();
  const uint64_t bytes = uint64_t(view.numel()) * view.element_size();
  TS_CHECK(bytes <= kMaxViewExpansion * storage_bytes || bytes == 0, state.name, "tensor '", path,
           "' is a view of size ", view.sizes(), " and stride ", view.strides(), " naming ", bytes,
           " bytes of a storage of ", storage_bytes,
           " bytes (stride 0 or overlapping): materializing it would write more than the file "
           "holds for it; refused (a tensor may name at most ",
           kMaxViewExpansion, "x its storage's bytes)");
  at::Tensor tensor = view;
  try {
    if (value.conjugate) tensor = tensor.conj().resolve_conj();
    if (value.negative) tensor = at::neg(tensor);
  } catch (const c10::Error& e) {
    TS_FAIL(state.name, "tensor '", path, "' is saved ", value.negative ? "negated" : "conjugated",
            " (torch's lazy view bit), and the ", c10::toString(view.scalar_type()),
            " values cannot be ", value.negative ? "negated" : "conjugated", ": ",
            e.what_without_backtrace());
  }
  state.resolved.emplace(&value, tensor);
  return tensor;
}

void flatten_into(const PickleValue& value, const std::string& prefix, int depth,
                  FlattenState& state) {
  const std::string& name = state.name;
  TS_CHECK(depth <= kMaxFlattenDepth, name, "'", prefix, "' is nested more than ", kMaxFlattenDepth,
           " dicts deep");
  for (const auto& [key, item] : value.entries) {
    TS_CHECK(key->kind == PickleValue::Kind::kString, name, "dict ",
             prefix.empty() ? std::string("at the top") : "'" + prefix + "'", " has the key ",
             describe(*key), ": only string keys name tensors");
    const std::string path = prefix.empty() ? key->text : prefix + "." + key->text;
    if (item->kind == PickleValue::Kind::kTensor) {
      TS_CHECK(state.seen.insert(path).second, name, "two tensors are named '", path,
               "' once nested keys are joined with '.'");
      state.out.emplace_back(path, resolve_tensor(*item, path, state));
    } else if (item->kind == PickleValue::Kind::kDict) {
      flatten_into(*item, path, depth + 1, state);
    } else {
      TS_FAIL(
          name, "'", path, "' is ", describe(*item),
          ", not a tensor or a dict of tensors: only tensors in (nested) dicts are converted "
          "strictly",
          item->kind == PickleValue::Kind::kObject
              ? " (the global is never imported or called; without strict, what is not a tensor "
                "is skipped and reported)"
              : "");
    }
  }
}

// ---- extract_tensors: what a checkpoint holds, looked through without running anything ----

// Python's names for the kinds (a placeholder's is its qualified name), for the skipped report.
std::string type_name(const PickleValue& value) {
  switch (value.kind) {
    case PickleValue::Kind::kNone:
      return "None";
    case PickleValue::Kind::kBool:
      return "bool";
    case PickleValue::Kind::kInt:
      return "int";
    case PickleValue::Kind::kFloat:
      return "float";
    case PickleValue::Kind::kString:
      return "str";
    case PickleValue::Kind::kTuple:
      return "tuple";
    case PickleValue::Kind::kList:
      return "list";
    case PickleValue::Kind::kDict:
      return "dict";
    case PickleValue::Kind::kBytes:
      return "bytes";
    case PickleValue::Kind::kSet:
      return "set";
    case PickleValue::Kind::kStorage:
      return "storage";
    case PickleValue::Kind::kTensor:
      return "tensor";
    case PickleValue::Kind::kGlobal:
    case PickleValue::Kind::kObject:
      return value.text.substr(0, 200);
  }
  return "value";
}

// repr(float) as Python writes it: the shortest digits that read back the same double, in fixed
// notation for decimal exponents -4 to 15 (with ".0" when integral), else scientific.
std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  char buffer[64];
  int digits = 1;
  for (; digits < 17; ++digits) {
    std::snprintf(buffer, sizeof(buffer), "%.*e", digits - 1, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::snprintf(buffer, sizeof(buffer), "%.*e", digits - 1, value);
  const int exponent = std::atoi(std::strchr(buffer, 'e') + 1);
  if (exponent < -4 || exponent >= 16) {
    std::string text = buffer;  // "1.5e+20": Python keeps two exponent digits at least, as C does
    return text;
  }
  const int decimals = std::max(0, digits - 1 - exponent);
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  std::string text = buffer;
  if (text.find('.') == std::string::npos) text += ".0";
  return text;
}

std::string python_str(const PickleValue& value) {
  switch (value.kind) {
    case PickleValue::Kind::kBool:
      return value.boolean ? "True" : "False";
    case PickleValue::Kind::kInt:
      return std::to_string(value.integer);
    case PickleValue::Kind::kFloat:
      return python_float(value.real);
    default:
      return value.text;
  }
}

bool is_scalar(const PickleValue& value) {
  return value.kind == PickleValue::Kind::kBool || value.kind == PickleValue::Kind::kInt ||
         value.kind == PickleValue::Kind::kFloat || value.kind == PickleValue::Kind::kString;
}

std::string join(const std::string& prefix, const std::string& part) {
  return prefix.empty() ? part : prefix + "." + part;
}

// A dict key as a path part: a string as is, an int in decimal; nullopt for any other key.
std::optional<std::string> key_part(const PickleValue& key) {
  if (key.kind == PickleValue::Kind::kString) return key.text;
  if (key.kind == PickleValue::Kind::kInt) return std::to_string(key.integer);
  return std::nullopt;
}

struct ExtractState {
  FlattenState flat;
  Extracted& result;
  bool metadata_scalars;
  std::string key;  // the selected part's path, which skipped and scalar paths start with
  std::unordered_set<const PickleValue*> on_path;
  uint64_t visits = 0;
  uint64_t path_bytes = 0;

  void skip(const std::string& path, std::string type) {
    result.skipped.emplace_back(join(key, path), std::move(type));
  }
};

bool visit(const PickleValue& value, const std::string& path, int depth, bool in_plain_dict,
           ExtractState& state);

bool visit_entries(const std::vector<std::pair<PickleValue*, PickleValue*>>& entries,
                   const std::string& path, int depth, bool plain, ExtractState& state) {
  bool found = false;
  for (const auto& [key, item] : entries) {
    const std::optional<std::string> part = key_part(*key);
    if (!part) {
      state.skip(join(path, "<" + describe(*key) + ">"),
                 "a dict entry whose key is a " + type_name(*key));
      continue;
    }
    found |= visit(*item, join(path, *part), depth + 1, plain, state);
  }
  return found;
}

bool visit_items(const std::vector<PickleValue*>& items, const std::string& path, int depth,
                 ExtractState& state) {
  bool found = false;
  for (size_t i = 0; i < items.size(); ++i) {
    found |= visit(*items[i], join(path, std::to_string(i)), depth + 1, false, state);
  }
  return found;
}

// An object's state dict. A pickled torch.nn.Module (Python's torch.save(model)) keeps its
// parameters, buffers and submodules in the dicts `_parameters`, `_buffers` and `_modules` of its
// __dict__ (torch/nn/modules/module.py): their entries join the object's path directly, so names
// come out as state_dict() gives them (`fc.weight`, not `_modules.fc._parameters.weight`), and the
// buffers named in `_non_persistent_buffers_set`, which state_dict() leaves out, are skipped.
bool visit_object_state(const std::vector<std::pair<PickleValue*, PickleValue*>>& entries,
                        const std::string& path, int depth, ExtractState& state) {
  std::unordered_set<std::string> non_persistent;
  for (const auto& [key, item] : entries) {
    if (key->kind == PickleValue::Kind::kString && key->text == "_non_persistent_buffers_set") {
      // A set, or (protocol 2) a `builtins.set` placeholder called with a list of the names.
      for (const PickleValue* element : item->items) {
        if (element->kind == PickleValue::Kind::kString) non_persistent.insert(element->text);
        if (item->kind != PickleValue::Kind::kObject) continue;
        for (const PickleValue* name : element->items) {
          if (name->kind == PickleValue::Kind::kString) non_persistent.insert(name->text);
        }
      }
    }
  }
  bool found = false;
  std::vector<std::pair<PickleValue*, PickleValue*>> rest;
  for (const auto& entry : entries) {
    const PickleValue& key = *entry.first;
    const PickleValue& item = *entry.second;
    const bool module_dict =
        key.kind == PickleValue::Kind::kString && item.kind == PickleValue::Kind::kDict &&
        (key.text == "_parameters" || key.text == "_buffers" || key.text == "_modules");
    if (!module_dict) {
      rest.push_back(entry);
      continue;
    }
    std::vector<std::pair<PickleValue*, PickleValue*>> members;
    for (const auto& member : item.entries) {
      const bool dropped = key.text == "_buffers" &&
                           member.first->kind == PickleValue::Kind::kString &&
                           non_persistent.count(member.first->text) != 0;
      if (dropped) {
        state.skip(join(path, member.first->text), "a non-persistent buffer");
      } else {
        members.push_back(member);
      }
    }
    found |= visit_entries(members, path, depth, false, state);
  }
  return visit_entries(rest, path, depth, false, state) || found;
}

bool visit(const PickleValue& value, const std::string& path, int depth, bool in_plain_dict,
           ExtractState& state) {
  const std::string& name = state.flat.name;
  state.path_bytes += path.size();
  TS_CHECK(++state.visits <= kMaxExtractVisits && state.path_bytes <= kMaxExtractPathBytes, name,
           "the checkpoint's values are reached by more than ", kMaxExtractVisits, " paths or ",
           kMaxExtractPathBytes,
           " bytes of dotted names (shared containers nested in each "
           "other): not a checkpoint's tree");
  TS_CHECK(depth <= kMaxFlattenDepth, name, "'", join(state.key, path), "' is nested more than ",
           kMaxFlattenDepth, " containers deep");
  switch (value.kind) {
    case PickleValue::Kind::kTensor: {
      const std::string tensor_name = path.empty() ? state.key : path;
      TS_CHECK(!tensor_name.empty(), name,
               "the checkpoint holds a bare tensor, which has no name: expected a dict of "
               "tensors (a state dict) or an object holding them");
      TS_CHECK(state.flat.seen.insert(tensor_name).second, name, "two tensors are named '",
               tensor_name, "' once nested keys are joined with '.'");
      state.flat.out.emplace_back(tensor_name, resolve_tensor(value, tensor_name, state.flat));
      return true;
    }
    case PickleValue::Kind::kDict:
    case PickleValue::Kind::kList:
    case PickleValue::Kind::kTuple:
    case PickleValue::Kind::kSet:
    case PickleValue::Kind::kObject:
      break;
    default:
      if (state.metadata_scalars && in_plain_dict && is_scalar(value)) {
        state.result.scalars.emplace_back(join(state.key, path), python_str(value));
      } else {
        state.skip(path, type_name(value));
      }
      return false;
  }
  if (!state.on_path.insert(&value).second) {  // a value inside itself (a memo cycle)
    state.skip(path, "a reference to an enclosing " + type_name(value));
    return false;
  }
  const size_t skipped_before = state.result.skipped.size();
  const size_t scalars_before = state.result.scalars.size();
  bool found = false;
  switch (value.kind) {
    case PickleValue::Kind::kDict:
      found = visit_entries(value.entries, path, depth, /*plain=*/true, state);
      break;
    case PickleValue::Kind::kObject:
      // A state dict's keys are attributes (a TorchScript module's `fc`, `weight`): they join
      // the object's own path, as named_parameters() names them; so do a (state, slots) pair's.
      for (const PickleValue* object_state : value.parts->states) {
        const bool pair = object_state->kind == PickleValue::Kind::kTuple &&
                          object_state->items.size() == 2 &&
                          object_state->items[1]->kind == PickleValue::Kind::kDict;
        if (object_state->kind == PickleValue::Kind::kDict) {
          found |= visit_object_state(object_state->entries, path, depth, state);
        } else if (pair) {
          if (object_state->items[0]->kind == PickleValue::Kind::kDict) {
            found |= visit_object_state(object_state->items[0]->entries, path, depth, state);
          } else if (object_state->items[0]->kind != PickleValue::Kind::kNone) {
            found |= visit(*object_state->items[0], path, depth + 1, false, state);
          }
          found |= visit_entries(object_state->items[1]->entries, path, depth, false, state);
        } else {
          found |= visit(*object_state, path, depth + 1, false, state);
        }
      }
      found |= visit_entries(value.entries, path, depth, false, state);
      found |= visit_items(value.parts->appended, path, depth, state);
      found |= visit_items(value.items, path, depth, state);
      break;
    default:
      found = visit_items(value.items, path, depth, state);
  }
  state.on_path.erase(&value);
  if (!found && state.result.scalars.size() == scalars_before) {
    // Nothing kept inside: the whole part is one entry of the report.
    state.result.skipped.resize(skipped_before);
    state.skip(path, type_name(value));
  }
  return found;
}

// The value a dotted key names, and (with metadata_scalars) the scalars beside the way to it.
const PickleValue& select(const PickleValue& root, const std::string& key, bool metadata_scalars,
                          Extracted& result, const std::string& name) {
  std::vector<std::string> parts;
  for (size_t begin = 0;;) {
    const size_t dot = key.find('.', begin);
    parts.push_back(key.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (dot == std::string::npos) break;
    begin = dot + 1;
  }
  const PickleValue* value = &root;
  std::string path;
  for (size_t i = 0; i < parts.size();) {
    // The entries to look in: a dict's, or a placeholder's state dicts' and items.
    std::vector<const std::vector<std::pair<PickleValue*, PickleValue*>>*> tables;
    if (value->kind == PickleValue::Kind::kDict) tables.push_back(&value->entries);
    if (value->kind == PickleValue::Kind::kObject) {
      for (const PickleValue* s : value->parts->states) {
        if (s->kind == PickleValue::Kind::kDict) tables.push_back(&s->entries);
      }
      tables.push_back(&value->entries);
    }
    const PickleValue* next = nullptr;
    size_t used = 0;
    // Keys may hold dots themselves ("model.fc.weight" in a state dict): the longest one wins.
    for (size_t n = parts.size() - i; n >= 1 && next == nullptr; --n) {
      std::string candidate = parts[i];
      for (size_t j = 1; j < n; ++j) candidate += "." + parts[i + j];
      for (const auto* table : tables) {
        for (const auto& [k, item] : *table) {
          const std::optional<std::string> part = key_part(*k);
          if (part && *part == candidate) {
            next = item;
            used = n;
          }
        }
      }
      const bool sequence =
          value->kind == PickleValue::Kind::kList || value->kind == PickleValue::Kind::kTuple;
      if (next == nullptr && sequence && n == 1 && !candidate.empty() &&
          candidate.find_first_not_of("0123456789") == std::string::npos && candidate.size() < 10 &&
          std::stoull(candidate) < value->items.size()) {
        next = value->items[std::stoull(candidate)];
        used = 1;
      }
    }
    if (next == nullptr) {
      std::string keys;
      size_t count = 0;
      for (const auto* table : tables) {
        for (const auto& entry : *table) {
          if (++count <= 8) keys += (keys.empty() ? "" : ", ") + describe(*entry.first);
        }
      }
      if (count > 8) keys += " and " + std::to_string(count - 8) + " more";
      TS_FAIL(name, "key '", key, "': ", path.empty() ? std::string("the top") : "'" + path + "'",
              " (", describe(*value), ") has no entry '", parts[i], "'",
              keys.empty() ? std::string() : " (it has " + keys + ")");
    }
    if (metadata_scalars && value->kind == PickleValue::Kind::kDict) {
      for (const auto& [k, item] : value->entries) {
        const std::optional<std::string> part = key_part(*k);
        if (part && item != next && is_scalar(*item)) {
          result.scalars.emplace_back(join(path, *part), python_str(*item));
        }
      }
    }
    std::string step = parts[i];
    for (size_t j = 1; j < used; ++j) step += "." + parts[i + j];
    path = join(path, step);
    value = next;
    i += used;
  }
  return *value;
}

}  // namespace

std::string describe(const PickleValue& value) {
  switch (value.kind) {
    case PickleValue::Kind::kString:
      return "the string '" + value.text.substr(0, 64) + (value.text.size() > 64 ? "...'" : "'");
    case PickleValue::Kind::kInt:
      return "the int " + std::to_string(value.integer);
    case PickleValue::Kind::kBool:
      return value.boolean ? "True" : "False";
    case PickleValue::Kind::kGlobal:
      return "the global " + value.text;
    case PickleValue::Kind::kObject:
      return (value.called ? "an object made by '" : "the global '") + value.text.substr(0, 200) +
             "'";
    case PickleValue::Kind::kTuple:
    case PickleValue::Kind::kList:
      return std::string(kind_name(value.kind)) + " of " + std::to_string(value.items.size());
    default:
      return kind_name(value.kind);
  }
}

PickleTree unpickle(std::string_view bytes, const StorageLoader& load_storage,
                    const std::string& name) {
  PickleTree tree;
  Machine machine(bytes, load_storage, name, tree.arena_, tree.object_parts_);
  tree.root_ = machine.run();
  return tree;
}

PickleTree unpickle_legacy(std::string_view bytes, const LegacyStorageLoader& load_storage,
                           const std::string& name, size_t& end) {
  PickleTree tree;
  const StorageLoader unused;
  Machine machine(bytes, unused, name, tree.arena_, tree.object_parts_, &load_storage, &end);
  tree.root_ = machine.run();
  return tree;
}

std::vector<std::pair<std::string, at::Tensor>> flatten_tensors(const PickleValue& root,
                                                                const std::string& name) {
  TS_CHECK(root.kind == PickleValue::Kind::kDict, name, "the checkpoint holds ", describe(root),
           ", expected a dict of tensors (a state dict)");
  FlattenState state{name, {}, {}, {}};
  flatten_into(root, "", 0, state);
  return std::move(state.out);
}

Extracted extract_tensors(const PickleValue& root, const std::string& key, bool strict,
                          bool metadata_scalars, const std::string& name) {
  Extracted result;
  const PickleValue& selected =
      key.empty() ? root : select(root, key, metadata_scalars, result, name);
  if (strict) {  // today's rule for the selected part: (nested) dicts of tensors, nothing else
    result.tensors = flatten_tensors(selected, name);
    return result;
  }
  ExtractState state{{name, {}, {}, {}}, result, metadata_scalars, key, {}, 0, 0};
  visit(selected, "", 0, selected.kind == PickleValue::Kind::kDict, state);
  result.tensors = std::move(state.flat.out);
  return result;
}

}  // namespace torch::safetensors::convert
