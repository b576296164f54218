// A restricted unpickler for the `data.pkl` of a torch.save checkpoint: it builds plain values
// (None, bools, ints, floats, strings, tuples, lists, dicts) and tensors, and nothing else. It
// never imports or calls anything: the only globals it accepts are the handful torch.save writes
// for tensors (a fixed table in unpickler.cpp), each mapped to a C++ action, and any other global
// is an error naming it. LibTorch's own unpickler is not used because it refuses
// `torch._utils._rebuild_tensor_v3` (FP8, unsigned and other newer dtypes).
//
// Everything the unpickler creates lives in a PickleTree's arena (raw pointers between values),
// so memo cycles and deep nesting cost no recursion on destruction and leak nothing.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Storage.h>

namespace torch::safetensors::convert {

struct TS_API PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kTuple,
    kList,
    kDict,
    kGlobal,   // an allowed global (see unpickler.cpp), `text` is "module.name"
    kStorage,  // a storage from a persistent id
    kTensor,
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                                            // kString; kGlobal's qualified name
  std::vector<PickleValue*> items;                             // kTuple, kList
  std::vector<std::pair<PickleValue*, PickleValue*>> entries;  // kDict, in insertion order
  int global_id = -1;                             // kGlobal: row of the allowed-globals table
  c10::ScalarType dtype = c10::ScalarType::Byte;  // kStorage: the storage type's dtype
  c10::Storage storage;                           // kStorage
  at::Tensor tensor;                              // kTensor: a view of its storage
  // kTensor: _rebuild_tensor_v2/v3's metadata {'neg': True} / {'conj': True}, torch's lazy
  // negation and conjugation bits: flatten_tensors materializes them.
  bool negative = false;
  bool conjugate = false;
};

// What the pickle says about a value, for error messages: "a list", "the string 'x'", ...
TS_API std::string describe(const PickleValue& value);

// A storage named by a persistent id ("storage", <type>, key, location, numel): the loader
// returns `nbytes` bytes of the record `key`, or throws.
using StorageLoader = std::function<c10::Storage(const std::string& key, uint64_t nbytes)>;

// The legacy (pre-1.6, non-zip) format's storages (legacy_format.h): its persistent ids are
// ("storage", <type>, root key, location, numel, view), and the loader also gets the storage
// type's dtype, since the file's records count elements of it.
using LegacyStorageLoader =
    std::function<c10::Storage(const std::string& key, uint64_t nbytes, c10::ScalarType dtype)>;

class TS_API PickleTree {
 public:
  const PickleValue& root() const { return *root_; }

 private:
  friend PickleTree unpickle(std::string_view, const StorageLoader&, const std::string&);
  friend PickleTree unpickle_legacy(std::string_view, const LegacyStorageLoader&,
                                    const std::string&, size_t&);
  std::deque<PickleValue> arena_;
  PickleValue* root_ = nullptr;
};

// Runs the pickle program `bytes` (protocols 2 to 5, the opcodes a tensor checkpoint uses).
// Errors are c10::Errors naming `name`, the opcode and its offset, or the refused global. The
// program must leave exactly its result at STOP, and nothing may follow STOP. Memory, stack,
// memo and strings are bounded by limits.h.
TS_API PickleTree unpickle(std::string_view bytes, const StorageLoader& load_storage,
                    const std::string& name);

// One pickle of a legacy torch.save file, which holds several one after another: as unpickle,
// except that bytes may follow STOP (`end` is set to the offset just past it), and that storages
// are legacy persistent ids. A view ((key, offset, numel), in elements; torch before 1.0 wrote
// them) is a slice of its root storage's bytes, which it must lie inside; a key names one root or
// one view, never both, and a view named twice names the same slice. torch.UntypedStorage is
// refused: a legacy file cannot say its dtype (torch.load fails on it too).
TS_API PickleTree unpickle_legacy(std::string_view bytes, const LegacyStorageLoader& load_storage,
                                  const std::string& name, size_t& end);

// The tensors of a (nested) dict, with nested keys joined by '.': {"a": {"b": t}} → "a.b".
// Anything else — a list, a number, a non-string key, a bare tensor at the top — is an error
// naming its dotted path. Tensors keep their storages (ties stay visible to the tie policy),
// except negated or conjugated ones, which are materialized (once per pickled tensor). A tensor
// naming more than kMaxViewExpansion times its storage's bytes (a stride-0 or overlapping view)
// is refused, naming it, its storage's size and its size.
TS_API std::vector<std::pair<std::string, at::Tensor>> flatten_tensors(const PickleValue& root,
                                                                const std::string& name);

}  // namespace torch::safetensors::convert
