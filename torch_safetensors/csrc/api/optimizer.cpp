// LibTorch optimizers in safetensors files: state tensors as tensors, options and scalar state as
// JSON documents in the metadata (optim.h has the layout). Every optimizer type is described once,
// by which fields its options and its per-parameter state have; saving and restoring visit them.
#include "torch_safetensors/optim.h"

#include <charconv>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <tuple>
#include <unordered_set>

#include <simdjson.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/lbfgs.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include "check.h"
#include "format/json_writer.h"

namespace torch::safetensors {
namespace {

namespace optim = torch::optim;
using Tensors = std::deque<at::Tensor>;

// ---- the fields of every optimizer (templates over constness: saving reads, restoring writes)

template <typename O, typename V>
void visit_options(O& o, V& v, optim::SGDOptions*) {
  v("lr", o.lr()), v("momentum", o.momentum()), v("dampening", o.dampening());
  v("weight_decay", o.weight_decay()), v("nesterov", o.nesterov());
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::SGDParamState*) {
  v("momentum_buffer", s.momentum_buffer());
}
// Adam and AdamW have the same fields.
template <typename O, typename V>
void visit_adam_options(O& o, V& v) {
  v("lr", o.lr()), v("betas", o.betas()), v("eps", o.eps());
  v("weight_decay", o.weight_decay()), v("amsgrad", o.amsgrad());
}
template <typename S, typename V>
void visit_adam_state(S& s, V& v) {
  v("step", s.step()), v("exp_avg", s.exp_avg()), v("exp_avg_sq", s.exp_avg_sq());
  v("max_exp_avg_sq", s.max_exp_avg_sq());
}
template <typename O, typename V>
void visit_options(O& o, V& v, optim::AdamOptions*) {
  visit_adam_options(o, v);
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::AdamParamState*) {
  visit_adam_state(s, v);
}
template <typename O, typename V>
void visit_options(O& o, V& v, optim::AdamWOptions*) {
  visit_adam_options(o, v);
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::AdamWParamState*) {
  visit_adam_state(s, v);
}
template <typename O, typename V>
void visit_options(O& o, V& v, optim::RMSpropOptions*) {
  v("lr", o.lr()), v("alpha", o.alpha()), v("eps", o.eps()), v("weight_decay", o.weight_decay());
  v("momentum", o.momentum()), v("centered", o.centered());
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::RMSpropParamState*) {
  v("step", s.step()), v("square_avg", s.square_avg());
  v("momentum_buffer", s.momentum_buffer()), v("grad_avg", s.grad_avg());
}
template <typename O, typename V>
void visit_options(O& o, V& v, optim::AdagradOptions*) {
  v("lr", o.lr()), v("lr_decay", o.lr_decay()), v("weight_decay", o.weight_decay());
  v("initial_accumulator_value", o.initial_accumulator_value()), v("eps", o.eps());
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::AdagradParamState*) {
  v("sum", s.sum()), v("step", s.step());
}
template <typename O, typename V>
void visit_options(O& o, V& v, optim::LBFGSOptions*) {
  v("lr", o.lr()), v("max_iter", o.max_iter()), v("max_eval", o.max_eval());
  v("tolerance_grad", o.tolerance_grad()), v("tolerance_change", o.tolerance_change());
  v("history_size", o.history_size()), v("line_search_fn", o.line_search_fn());
}
template <typename S, typename V>
void visit_state(S& s, V& v, optim::LBFGSParamState*) {
  v("func_evals", s.func_evals()), v("n_iter", s.n_iter()), v("t", s.t());
  v("prev_loss", s.prev_loss()), v("d", s.d()), v("H_diag", s.H_diag());
  v("prev_flat_grad", s.prev_flat_grad()), v("old_dirs", s.old_dirs());
  v("old_stps", s.old_stps()), v("ro", s.ro()), v("al", s.al());
}

// ---- saving: scalars to a JSON object, tensors to entries

void append_double(std::string& out, double value) {
  if (!std::isfinite(value)) {  // JSON has no such numbers
    out += std::isnan(value) ? "\"nan\"" : value > 0 ? "\"inf\"" : "\"-inf\"";
    return;
  }
  char buffer[32];
  const auto end = std::to_chars(buffer, buffer + sizeof(buffer), value).ptr;  // round-trips
  out.append(buffer, end);
}

class Writer {
 public:
  Writer(std::string& json, std::vector<SaveEntry>* entries, std::string prefix)
      : json_(json), entries_(entries), prefix_(std::move(prefix)) {}

  void operator()(std::string_view key, double value) { append_double(field(key), value); }
  void operator()(std::string_view key, int64_t value) {
    std::string& out = field(key);
    if (value < 0) out += '-';
    format::append_uint(out, value < 0 ? 0 - uint64_t(value) : uint64_t(value));
  }
  void operator()(std::string_view key, bool value) { field(key) += value ? "true" : "false"; }
  void operator()(std::string_view key, const std::tuple<double, double>& value) {
    field(key) += '[';
    append_double(json_, std::get<0>(value));
    json_ += ',';
    append_double(json_, std::get<1>(value));
    json_ += ']';
  }
  void operator()(std::string_view key, const std::optional<int64_t>& value) {
    if (value) return (*this)(key, *value);
    field(key) += "null";
  }
  void operator()(std::string_view key, const std::optional<std::string>& value) {
    if (value) return format::append_json_string(field(key), *value);
    field(key) += "null";
  }
  void operator()(std::string_view key, const at::Tensor& value) {
    if (value.defined()) entries_->emplace_back(prefix_ + std::string(key), value);
  }
  void operator()(std::string_view key, const Tensors& values) {
    (*this)(key, int64_t(values.size()));
    for (size_t k = 0; k < values.size(); ++k) {
      (*this)(std::string(key) + "." + std::to_string(k), values[k]);
    }
  }
  void operator()(std::string_view key, const std::optional<std::vector<at::Tensor>>& values) {
    if (!values) return void(field(key) += "null");
    (*this)(key, Tensors(values->begin(), values->end()));
  }

 private:
  std::string& field(std::string_view key) {
    if (json_.back() != '{') json_ += ',';
    format::append_json_string(json_, key);
    json_ += ':';
    return json_;
  }
  std::string& json_;
  std::vector<SaveEntry>* entries_;
  std::string prefix_;
};

// ---- restoring: from the parsed JSON and the file

class Reader {
 public:
  Reader(simdjson::dom::object json, const File& file, std::string prefix, std::string where,
         c10::Device device)
      : json_(json),
        file_(file),
        prefix_(std::move(prefix)),
        where_(std::move(where)),
        device_(device) {}

  void operator()(std::string_view key, double& value) { value = as_double(get(key), key); }
  void operator()(std::string_view key, int64_t& value) {
    const auto got = get(key).get_int64();
    TS_CHECK(!got.error(), file_.path(), where_, "'", key, "' must be an integer");
    value = got.value_unsafe();
  }
  void operator()(std::string_view key, bool& value) {
    const auto got = get(key).get_bool();
    TS_CHECK(!got.error(), file_.path(), where_, "'", key, "' must be true or false");
    value = got.value_unsafe();
  }
  void operator()(std::string_view key, std::tuple<double, double>& value) {
    const auto array = get(key).get_array();
    TS_CHECK(!array.error() && array.value_unsafe().size() == 2, file_.path(), where_, "'", key,
             "' must be an array of two numbers");
    value = {as_double(array.value_unsafe().at(0).value_unsafe(), key),
             as_double(array.value_unsafe().at(1).value_unsafe(), key)};
  }
  void operator()(std::string_view key, std::optional<int64_t>& value) {
    if (get(key).is_null()) return void(value = std::nullopt);
    value.emplace();
    (*this)(key, *value);
  }
  void operator()(std::string_view key, std::optional<std::string>& value) {
    const auto element = get(key);
    if (element.is_null()) return void(value = std::nullopt);
    const auto got = element.get_string();
    TS_CHECK(!got.error(), file_.path(), where_, "'", key, "' must be a string or null");
    value = std::string(got.value_unsafe());
  }
  void operator()(std::string_view key, at::Tensor& value) {
    const std::string name = prefix_ + std::string(key);
    value = file_.contains(name) ? file_.tensor(name).to(device_) : at::Tensor();
  }
  void operator()(std::string_view key, Tensors& values) {
    int64_t count = 0;
    (*this)(key, count);
    TS_CHECK(count >= 0 && uint64_t(count) <= file_.size(), file_.path(), where_, "'", key,
             "' counts ", count, " tensors, but the file has ", file_.size());
    values.assign(size_t(count), at::Tensor());
    for (int64_t k = 0; k < count; ++k) {
      const std::string name = std::string(key) + "." + std::to_string(k);
      (*this)(name, values[size_t(k)]);
      TS_CHECK(values[size_t(k)].defined(), file_.path(), "tensor '", prefix_, name,
               "' is missing");
    }
  }
  void operator()(std::string_view key, std::optional<std::vector<at::Tensor>>& values) {
    if (get(key).is_null()) return void(values = std::nullopt);
    Tensors tensors;
    (*this)(key, tensors);
    values = std::vector<at::Tensor>(tensors.begin(), tensors.end());
  }

 private:
  simdjson::dom::element get(std::string_view key) {
    const auto got = json_[key];
    TS_CHECK(!got.error(), file_.path(), where_, "has no '", key, "'");
    return got.value_unsafe();
  }
  double as_double(simdjson::dom::element element, std::string_view key) {
    if (const auto text = element.get_string(); !text.error()) {
      const std::string_view s = text.value_unsafe();
      if (s == "nan") return std::nan("");
      if (s == "inf" || s == "-inf") return s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
    }
    const auto got = element.get_double();
    TS_CHECK(!got.error(), file_.path(), where_, "'", key, "' must be a number");
    return got.value_unsafe();
  }

  simdjson::dom::object json_;
  const File& file_;
  std::string prefix_;
  std::string where_;
  c10::Device device_;
};

constexpr std::string_view kTypeKey = "optimizer";
constexpr std::string_view kGroupsKey = "param_groups";
constexpr std::string_view kStateKey = "state";

// Every parameter over all groups, in order: its index is its name in the file.
std::vector<at::Tensor> all_params(const optim::Optimizer& optimizer) {
  std::vector<at::Tensor> params;
  for (const auto& group : optimizer.param_groups()) {
    params.insert(params.end(), group.params().begin(), group.params().end());
  }
  return params;
}

template <typename Options, typename State>
OptimizerState save_as(const optim::Optimizer& optimizer, std::string_view type) {
  OptimizerState out;
  out.metadata.emplace(kTypeKey, type);
  std::string groups = "[";
  size_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    if (groups.size() > 1) groups += ',';
    groups += "{\"params\":[";
    for (size_t i = 0; i < group.params().size(); ++i, ++index) {
      if (i) groups += ',';
      format::append_uint(groups, index);
    }
    groups += ']';
    Writer writer(groups, nullptr, "");
    visit_options(static_cast<const Options&>(group.options()), writer, (Options*)nullptr);
    groups += '}';
  }
  out.metadata.emplace(kGroupsKey, groups + "]");
  std::string state = "{";
  const std::vector<at::Tensor> params = all_params(optimizer);
  // A tensor listed twice (a tied weight through Module::parameters()) has one state, keyed by its
  // TensorImpl as LibTorch keeps it: written once, under its first index; loading it restores
  // the state of every index, which are the same tensor.
  std::unordered_set<const void*> written;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto found = optimizer.state().find(params[i].unsafeGetTensorImpl());
    if (found == optimizer.state().end()) continue;
    if (!written.insert(params[i].unsafeGetTensorImpl()).second) continue;
    if (state.size() > 1) state += ',';
    format::append_json_string(state, std::to_string(i));
    state += ":{";
    Writer writer(state, &out.entries, "state." + std::to_string(i) + ".");
    visit_state(static_cast<const State&>(*found->second), writer, (State*)nullptr);
    state += '}';
  }
  out.metadata.emplace(kStateKey, state + "}");
  return out;
}

simdjson::dom::element parse_json(simdjson::dom::parser& parser, const File& file,
                                  std::string_view key) {
  const auto& metadata = file.metadata();
  const auto found = metadata ? metadata->find(std::string(key)) : Metadata::const_iterator();
  TS_CHECK(metadata && found != metadata->end(), file.path(),
           "not an optimizer's file: its metadata has no '", key, "'");
  const auto parsed = parser.parse(found->second);
  TS_CHECK(!parsed.error(), file.path(), "metadata '", key,
           "' is not valid JSON: ", simdjson::error_message(parsed.error()));
  return parsed.value_unsafe();
}

template <typename Options, typename State>
void restore_as(optim::Optimizer& optimizer, const File& file) {
  // Everything is built first and swapped in at the end: an error changes nothing.
  simdjson::dom::parser groups_parser, state_parser;
  const auto groups = parse_json(groups_parser, file, kGroupsKey).get_array();
  TS_CHECK(!groups.error(), file.path(), "metadata 'param_groups' must be a JSON array");
  auto& targets = optimizer.param_groups();
  TS_CHECK(groups.value_unsafe().size() == targets.size(), file.path(), "the file has ",
           groups.value_unsafe().size(), " parameter groups, the optimizer ", targets.size());
  std::vector<std::unique_ptr<optim::OptimizerOptions>> options;
  size_t index = 0, g = 0;
  for (simdjson::dom::element element : groups.value_unsafe()) {
    const std::string where = "param_groups[" + std::to_string(g) + "] ";
    const auto object = element.get_object();
    TS_CHECK(!object.error(), file.path(), where, "must be a JSON object");
    const auto params = object.value_unsafe()["params"].get_array();
    const size_t count = targets[g].params().size();
    TS_CHECK(!params.error() && params.value_unsafe().size() == count, file.path(), where,
             "must list ", count, " parameters, as the optimizer's group has");
    for (simdjson::dom::element p : params.value_unsafe()) {
      const auto got = p.get_uint64();
      TS_CHECK(!got.error() && got.value_unsafe() == index, file.path(), where,
               "lists parameter indices out of order (expected ", index, ")");
      ++index;
    }
    std::unique_ptr<optim::OptimizerOptions> group_options = targets[g].options().clone();
    Reader reader(object.value_unsafe(), file, "", where, c10::kCPU);
    visit_options(static_cast<Options&>(*group_options), reader, (Options*)nullptr);
    options.push_back(std::move(group_options));
    ++g;
  }
  const auto state = parse_json(state_parser, file, kStateKey).get_object();
  TS_CHECK(!state.error(), file.path(), "metadata 'state' must be a JSON object");
  const std::vector<at::Tensor> params = all_params(optimizer);
  std::vector<std::pair<void*, std::unique_ptr<optim::OptimizerParamState>>> states;
  for (auto [key, value] : state.value_unsafe()) {
    const std::string where = "state[\"" + std::string(key) + "\"] ";
    size_t i = 0;
    const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), i);
    TS_CHECK(error == std::errc() && end == key.data() + key.size() && i < params.size(),
             file.path(), where, "names no parameter (the optimizer has ", params.size(), ")");
    const auto object = value.get_object();
    TS_CHECK(!object.error(), file.path(), where, "must be a JSON object");
    auto param_state = std::make_unique<State>();
    Reader reader(object.value_unsafe(), file, "state." + std::string(key) + ".", where,
                  params[i].device());
    visit_state(*param_state, reader, (State*)nullptr);
    states.emplace_back(params[i].unsafeGetTensorImpl(), std::move(param_state));
  }
  for (size_t k = 0; k < targets.size(); ++k) targets[k].set_options(std::move(options[k]));
  optimizer.state().clear();
  for (auto& [key, value] : states) optimizer.state()[key] = std::move(value);
}

// Every optimizer type this file knows, by its name in files.
#define TS_FORALL_OPTIMIZERS(_) _(SGD) _(Adam) _(AdamW) _(RMSprop) _(Adagrad) _(LBFGS)

}  // namespace

OptimizerState optimizer_state(const optim::Optimizer& optimizer) {
#define TS_SAVE_AS(Type)                                                             \
  if (dynamic_cast<const optim::Type*>(&optimizer)) {                                \
    return save_as<optim::Type##Options, optim::Type##ParamState>(optimizer, #Type); \
  }
  TS_FORALL_OPTIMIZERS(TS_SAVE_AS)
#undef TS_SAVE_AS
  TORCH_CHECK(false, "safetensors: optimizer of type ", typeid(optimizer).name(),
              " is not one this library can save (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS)");
}

void restore_optimizer(optim::Optimizer& optimizer, const File& file) {
  const auto& metadata = file.metadata();
  const auto type = metadata ? metadata->find(std::string(kTypeKey)) : Metadata::const_iterator();
  TS_CHECK(metadata && type != metadata->end(), file.path(),
           "not an optimizer's file: its metadata has no 'optimizer'");
#define TS_RESTORE_AS(Type)                                                             \
  if (dynamic_cast<optim::Type*>(&optimizer)) {                                         \
    TS_CHECK(type->second == #Type, file.path(), "holds the state of a ", type->second, \
             " optimizer, which cannot be loaded into a " #Type " optimizer");          \
    return restore_as<optim::Type##Options, optim::Type##ParamState>(optimizer, file);  \
  }
  TS_FORALL_OPTIMIZERS(TS_RESTORE_AS)
#undef TS_RESTORE_AS
  TS_FAIL(file.path(), "optimizer of type ", typeid(optimizer).name(),
          " is not one this library can load (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS)");
}

void save(const optim::Optimizer& optimizer, const SaveTo& to) {
  const OptimizerState state = optimizer_state(optimizer);
  save(state.entries, to, state.metadata);
}

void load(optim::Optimizer& optimizer, const LoadFrom& from, std::optional<c10::Device> device) {
  // Owned, 64-byte aligned memory rather than views of the mapping: the state is rewritten every
  // step anyway, and reductions over unaligned data may sum in another order (LBFGS's dot
  // products then drift from an uninterrupted run in the last bits).
  // With `device`, the state is read there (then moved to each parameter's device, a no-op when
  // it is the same), as torch::load(optimizer, source, device) does.
  LoadOptions options = LoadOptions().with_backend(Backend::kPread);
  options.device = device;
  restore_optimizer(optimizer, from.open(options));
}

}  // namespace torch::safetensors
