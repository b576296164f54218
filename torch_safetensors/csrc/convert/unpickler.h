// A restricted unpickler for the `data.pkl` of a torch.save checkpoint (or of a LibTorch /
// TorchScript archive): it builds plain values (None, bools, ints, floats, strings, bytes, tuples,
// lists, sets, dicts) and tensors, and nothing else. It never imports or calls anything: the only
// globals it acts on are the handful torch.save writes for tensors (a fixed table in
// unpickler.cpp), each mapped to a C++ action. Any other global becomes an inert placeholder
// (kObject) that keeps only its qualified name; calling it (REDUCE, NEWOBJ), setting its state
// (BUILD) or its items gives another placeholder that keeps the arguments, states and items only
// so that extract_tensors can find tensors inside. LibTorch's own unpickler is not used because it
// refuses `torch._utils._rebuild_tensor_v3` (FP8, unsigned and other newer dtypes).
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
    kBytes,  // `text` holds the bytes
    kSet,    // a set or frozenset, its items in `items`
    // A placeholder: a global outside the allow-list (`text` is "module.name", `called` false),
    // or what calling it would have made (`called` true; `text` names the callable). Its
    // arguments are `items`, what SETITEM(S) set on it `entries`, what APPEND(S) added
    // `parts->appended`, and its BUILD states `parts->states`, in order. Nothing is ever
    // imported or run.
    kObject,
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                                            // kString; kGlobal's qualified name
  std::vector<PickleValue*> items;                             // kTuple, kList
  std::vector<std::pair<PickleValue*, PickleValue*>> entries;  // kDict, in insertion order
  // kObject: what APPEND(S) added and the BUILD states, apart so that other values stay small.
  struct ObjectParts {
    std::vector<PickleValue*> appended;
    std::vector<PickleValue*> states;
  };
  ObjectParts* parts = nullptr;                   // kObject: never null
  bool called = false;                            // kObject
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
  std::deque<PickleValue::ObjectParts> object_parts_;
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

// What extract_tensors finds (convert.h's ExtractOptions say what to look at).
struct TS_API Extracted {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<std::pair<std::string, std::string>> skipped;  // (dotted path, type name)
  std::vector<std::pair<std::string, std::string>> scalars;  // (dotted path, str(value))
};

// The tensors under `key` (a dotted path into the object; empty: the whole object), named by
// their dotted paths relative to it. Dicts (string or int keys), lists, tuples and sets are
// looked through (elements named by index), and so are placeholders (their state dicts' keys
// join the path, so a TorchScript module's attributes are named as named_parameters() names
// them; arguments and appended items by index). Every largest part holding no tensor is one
// `skipped` entry (its path and type: "int", "list", or a placeholder's qualified name). With
// `metadata_scalars`, the ints, floats, bools and strings that are values of plain dicts (in the
// selected part, or beside the path to it) go to `scalars` as Python's str() writes them,
// instead. `strict`: the selected part must be a (nested) dict of tensors, as flatten_tensors
// requires. Shared values are visited once per path; a value that contains itself is skipped
// where it recurs; nesting and the number of values visited are bounded.
TS_API Extracted extract_tensors(const PickleValue& root, const std::string& key, bool strict,
                                 bool metadata_scalars, const std::string& name);

}  // namespace torch::safetensors::convert
