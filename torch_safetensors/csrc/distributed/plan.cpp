// Shard plans as pure planning: tensor names and sizes in, each rank's pieces out. No I/O, no
// tensors; load_for_rank.cpp reads what this plans.
#include <algorithm>
#include <limits>
#include <map>
#include <sstream>

#include "check.h"
#include "distributed/plan.h"

namespace torch::safetensors {
namespace {

std::vector<std::string_view> segments(std::string_view path) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    out.push_back(path.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) return out;
    start = dot + 1;
  }
}

bool is_number(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A pattern's last segments against a path's last segments; `*` matches one numeric segment.
bool suffix_match(const std::vector<std::string_view>& pattern,
                  const std::vector<std::string_view>& path) {
  if (pattern.size() > path.size()) return false;
  const size_t skip = path.size() - pattern.size();
  for (size_t i = 0; i < pattern.size(); ++i) {
    const std::string_view p = pattern[i], s = path[skip + i];
    if (p == "*" ? !is_number(s) : p != s) return false;
  }
  return true;
}

std::string_view module_of(std::string_view name) {
  const size_t dot = name.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : name.substr(0, dot);
}

// The pattern that wins for `name`: the longest matching one, then the one with fewer `*`.
struct CompiledPatterns {
  struct Entry {
    std::vector<std::string_view> segments;
    int64_t stars;
    size_t index;  // into the plan's patterns
  };
  std::vector<Entry> entries;

  explicit CompiledPatterns(const std::vector<std::pair<std::string, ShardRule>>& patterns) {
    for (size_t i = 0; i < patterns.size(); ++i) {
      auto segs = segments(patterns[i].first);
      const int64_t stars = std::count(segs.begin(), segs.end(), std::string_view("*"));
      entries.push_back({std::move(segs), stars, i});
    }
  }
  std::optional<size_t> find(std::string_view name) const {
    const auto full = segments(name);
    const auto module =
        module_of(name).empty() ? std::vector<std::string_view>() : segments(module_of(name));
    const Entry* best = nullptr;
    for (const Entry& e : entries) {
      if (!suffix_match(e.segments, module) && !suffix_match(e.segments, full)) continue;
      if (!best || e.segments.size() > best->segments.size() ||
          (e.segments.size() == best->segments.size() && e.stars < best->stars)) {
        best = &e;
      }
    }
    return best ? std::optional<size_t>(best->index) : std::nullopt;
  }
};

std::optional<int64_t> layer_index(std::string_view name, std::string_view layers) {
  const auto segs = segments(name);
  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    if (segs[i] == layers && is_number(segs[i + 1]) && segs[i + 1].size() <= 18) {
      return std::stoll(std::string(segs[i + 1]));
    }
  }
  return std::nullopt;
}

int64_t num_stages(const ShardPlan& plan) {
  return plan.pipeline ? int64_t(plan.pipeline->stages.size()) : 1;
}

std::string ranges_text(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::ostringstream out;
  for (size_t i = 0; i < ranges.size(); ++i)
    out << (i ? ", " : "") << "[" << ranges[i].first << ", " << ranges[i].second << ")";
  return out.str();
}

// The reference's [begin, end) ranges along `dim` for each tensor-parallel rank.
std::vector<std::vector<std::pair<int64_t, int64_t>>> rule_ranges(const ShardRule& rule,
                                                                  int64_t size, int64_t tp,
                                                                  std::string_view source,
                                                                  const std::string& name,
                                                                  int64_t dim) {
  std::vector<int64_t> blocks = rule.blocks;
  const bool packed =
      rule.style == ShardStyle::kPackedColwise || rule.style == ShardStyle::kPackedRowwise;
  if (!packed) {
    blocks = {size};
  } else if (blocks.empty()) {
    TS_CHECK(size % 2 == 0, source, "tensor '", name, "': packed style ", rule.to_string(),
             " without block sizes means two equal blocks, but dimension ", dim, " has size ", size,
             " (odd)");
    blocks = {size / 2, size / 2};
  }
  int64_t total = 0;
  for (int64_t b : blocks) total += b;
  TS_CHECK(total == size, source, "tensor '", name, "': the packed blocks of ", rule.to_string(),
           " add up to ", total, ", expected dimension ", dim, "'s size ", size);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> out(tp);
  int64_t start = 0;
  for (int64_t b : blocks) {
    TS_CHECK(b % tp == 0, source, "tensor '", name, "': dimension ", dim, (packed ? " block" : ""),
             " of size ", b, " does not divide evenly into ", tp,
             " ranks (an explicit plan can split it unevenly)");
    const int64_t part = b / tp;
    for (int64_t r = 0; r < tp; ++r) out[r].push_back({start + r * part, start + (r + 1) * part});
    start += b;
  }
  return out;
}

int64_t split_dim(ShardStyle style) {
  switch (style) {
    case ShardStyle::kColwise:
    case ShardStyle::kPackedColwise:
    case ShardStyle::kEmbedding:
      return 0;
    case ShardStyle::kRowwise:
    case ShardStyle::kPackedRowwise:
    case ShardStyle::kEmbeddingColwise:
      return 1;
    case ShardStyle::kReplicate:
      break;
  }
  return -1;
}

// How a module's other tensor follows the reference's split along `dim` (reference size `size`):
// the same ranges, whole blocks of B, or replicated (nullopt).
std::optional<std::vector<std::pair<int64_t, int64_t>>> follow(
    const std::vector<int64_t>& sizes, size_t reference_rank, int64_t dim, int64_t size,
    const std::vector<std::pair<int64_t, int64_t>>& ranges, std::string_view source,
    const std::string& name) {
  if (int64_t(sizes.size()) <= dim) return std::nullopt;
  const int64_t own = sizes[dim];
  if (own == size) return ranges;
  if (own <= 1 || sizes.size() != reference_rank) return std::nullopt;
  // The block size B with ceil(size / B) == own: a power of two when one fits (every block
  // format's blocks are), else ceil(size / own).
  auto fits = [&](int64_t b) { return b > 0 && (size + b - 1) / b == own; };
  int64_t block = 0;
  for (int64_t b = 1; b <= size && !block; b *= 2)
    if (fits(b)) block = b;
  if (!block && fits((size + own - 1) / own)) block = (size + own - 1) / own;
  TS_CHECK(block > 0, source, "tensor '", name, "': dimension ", dim, " has size ", own,
           ", which neither equals its module's split dimension (", size,
           ") nor counts whole blocks of it");
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& [begin, end] : ranges) {
    TS_CHECK(begin % block == 0 && (end % block == 0 || end == size), source, "tensor '", name,
             "': the split [", begin, ", ", end, ") of its module cuts a block of ", block,
             " (dimension ", dim, " of size ", own, " holds one entry per block)");
    out.push_back({begin / block, (end + block - 1) / block});
  }
  return out;
}

}  // namespace

ShardRule ShardRule::parse(std::string_view text) {
  const size_t colon = text.find(':');
  const std::string_view style = text.substr(0, colon);
  ShardRule rule;
  static const std::map<std::string_view, ShardStyle> kNames = {
      {"colwise", ShardStyle::kColwise},
      {"colwise_rep", ShardStyle::kColwise},
      {"local_colwise", ShardStyle::kColwise},
      {"rowwise", ShardStyle::kRowwise},
      {"rowwise_rep", ShardStyle::kRowwise},
      {"local_rowwise", ShardStyle::kRowwise},
      {"packed_colwise", ShardStyle::kPackedColwise},
      {"packed_rowwise", ShardStyle::kPackedRowwise},
      {"local_packed_rowwise", ShardStyle::kPackedRowwise},
      {"embedding", ShardStyle::kEmbedding},
      {"embedding_rowwise", ShardStyle::kEmbedding},
      {"vocab_parallel", ShardStyle::kEmbedding},
      {"embedding_colwise", ShardStyle::kEmbeddingColwise},
      {"replicate", ShardStyle::kReplicate},
      {"local", ShardStyle::kReplicate},
      {"gather", ShardStyle::kReplicate},
      {"sequence_parallel", ShardStyle::kReplicate},
  };
  const auto found = kNames.find(style);
  TORCH_CHECK(found != kNames.end(), "safetensors: shard plan: unknown style '", text,
              "'; expected colwise, rowwise, packed_colwise, packed_rowwise, embedding, "
              "embedding_colwise or replicate");
  rule.style = found->second;
  if (colon == std::string_view::npos) return rule;
  TORCH_CHECK(split_dim(rule.style) >= 0 && (rule.style == ShardStyle::kPackedColwise ||
                                             rule.style == ShardStyle::kPackedRowwise),
              "safetensors: shard plan: '", text, "': only packed styles take block sizes");
  std::string_view rest = text.substr(colon + 1);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string number(rest.substr(0, comma));
    TORCH_CHECK(is_number(number) && number.size() <= 18, "safetensors: shard plan: '", text,
                "': block size '", number, "' is not a non-negative integer");
    rule.blocks.push_back(std::stoll(number));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  return rule;
}

std::string ShardRule::to_string() const {
  static const char* kCanonical[] = {"replicate",        "colwise",        "rowwise",
                                     "packed_colwise",   "packed_rowwise", "embedding",
                                     "embedding_colwise"};
  std::string out = kCanonical[int(style)];
  for (size_t i = 0; i < blocks.size(); ++i) out += (i ? "," : ":") + std::to_string(blocks[i]);
  return out;
}

std::string ShardPlan::to_string() const {
  std::ostringstream out;
  for (const auto& [pattern, rule] : patterns)
    out << "pattern " << pattern << " " << rule.to_string() << "\n";
  for (const auto& [name, split] : tensors) {
    out << "tensor " << name << " dim " << split.dim;
    for (const auto& [offset, length] : split.ranges) out << " " << offset << "+" << length;
    out << "\n";
  }
  if (pipeline) {
    out << "pipeline " << pipeline->layers;
    for (const auto& [first, last] : pipeline->stages) out << " " << first << "-" << last;
    for (const auto& p : pipeline->first_stage) out << " first:" << p;
    out << "\n";
  }
  if (experts) {
    static const char* kPlacement[] = {"contiguous", "round_robin", "explicit"};
    out << "experts " << experts->num_experts << " ep " << experts->ep_size << " "
        << kPlacement[int(experts->placement)] << " segment " << experts->segment;
    for (const auto& mine : experts->assignment) {
      out << " [";
      for (size_t i = 0; i < mine.size(); ++i) out << (i ? "," : "") << mine[i];
      out << "]";
    }
    out << "\n";
  }
  out << "strict " << strict << "\n";
  return out.str();
}

PipelinePlan PipelinePlan::even(int64_t num_layers, int64_t num_stages) {
  TORCH_CHECK(num_stages >= 1 && num_layers >= 0, "safetensors: pipeline plan: expected at least ",
              "one stage and a non-negative number of layers, found ", num_stages, " stages and ",
              num_layers, " layers");
  PipelinePlan plan;
  int64_t first = 0;
  for (int64_t s = 0; s < num_stages; ++s) {
    const int64_t count = num_layers / num_stages + (s < num_layers % num_stages ? 1 : 0);
    plan.stages.push_back({first, first + count});
    first += count;
  }
  return plan;
}

ExpertPlacement ExpertPlan::parse_placement(std::string_view text) {
  if (text == "contiguous") return ExpertPlacement::kContiguous;
  if (text == "round_robin") return ExpertPlacement::kRoundRobin;
  if (text == "explicit") return ExpertPlacement::kExplicit;
  TORCH_CHECK(
      false, "safetensors: expert plan: unknown placement '", text,
      "'; expected contiguous, round_robin or explicit (an assignment of experts to ranks)");
}

std::vector<int64_t> ExpertPlan::experts_of(int64_t ep_rank, int64_t ep) const {
  TORCH_CHECK(num_experts >= 1, "safetensors: expert plan: expected at least one expert, found ",
              num_experts);
  TORCH_CHECK(ep >= 1 && ep_rank >= 0 && ep_rank < ep, "safetensors: expert plan: EP rank ",
              ep_rank, " is outside [0, ", ep, ")");
  std::vector<int64_t> out;
  switch (placement) {
    case ExpertPlacement::kContiguous: {
      const int64_t base = num_experts / ep, extra = num_experts % ep;
      const int64_t first = ep_rank * base + std::min(ep_rank, extra);
      for (int64_t e = first; e < first + base + (ep_rank < extra ? 1 : 0); ++e) out.push_back(e);
      return out;
    }
    case ExpertPlacement::kRoundRobin:
      for (int64_t e = ep_rank; e < num_experts; e += ep) out.push_back(e);
      return out;
    case ExpertPlacement::kExplicit:
      break;
  }
  TORCH_CHECK(int64_t(assignment.size()) == ep, "safetensors: expert plan: the assignment gives ",
              "experts for ", assignment.size(), " ranks, expected one list per EP rank (", ep,
              ")");
  std::vector<int64_t> owner(num_experts, -1);
  for (int64_t r = 0; r < ep; ++r) {
    for (int64_t e : assignment[r]) {
      TORCH_CHECK(e >= 0 && e < num_experts, "safetensors: expert plan: EP rank ", r,
                  " is assigned expert ", e, ", outside [0, ", num_experts, ")");
      TORCH_CHECK(owner[e] < 0, "safetensors: expert plan: expert ", e,
                  " is owned twice, by EP ranks ", owner[e], " and ", r,
                  " (expected exactly one owner)");
      owner[e] = r;
    }
  }
  for (int64_t e = 0; e < num_experts; ++e)
    TORCH_CHECK(owner[e] >= 0, "safetensors: expert plan: expert ", e,
                " is owned by no EP rank (expected exactly one owner; ", num_experts, " experts)");
  out = assignment[ep_rank];
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> Piece::sizes() const {
  std::vector<int64_t> out = full_sizes;
  for (const DimSplit& split : splits) {
    int64_t n = 0;
    for (const auto& [begin, end] : split.ranges) n += end - begin;
    out[split.dim] = n;
  }
  return out;
}

namespace distributed {

RankLayout rank_layout(const ShardPlan& plan, int64_t rank, int64_t world_size,
                       std::string_view source) {
  const int64_t stages = num_stages(plan);
  TORCH_CHECK(world_size >= 1, "safetensors: ", source, ": world size must be at least 1, found ",
              world_size);
  TORCH_CHECK(rank >= 0 && rank < world_size, "safetensors: ", source, ": rank ", rank,
              " is outside [0, ", world_size, ")");
  TORCH_CHECK(stages >= 1, "safetensors: ", source, ": the pipeline plan has no stages");
  TORCH_CHECK(world_size % stages == 0, "safetensors: ", source, ": world size ", world_size,
              " does not divide into the pipeline's ", stages, " stages");
  const int64_t per_stage = world_size / stages;
  if (!plan.experts) {
    RankLayout layout;
    layout.stage = rank / per_stage;
    layout.num_stages = stages;
    layout.tp_rank = rank % per_stage;
    layout.tp_size = per_stage;
    return layout;
  }
  const ExpertPlan& e = *plan.experts;
  const int64_t ep = e.ep_size == 0 ? per_stage : e.ep_size;
  TORCH_CHECK(ep >= 1 && per_stage % ep == 0, "safetensors: ", source, ": expert-parallel size ",
              e.ep_size, " does not divide the ", per_stage,
              " ranks of a pipeline stage (world size ", world_size, ", ", stages, " stages)");
  const int64_t tp = per_stage / ep, local = rank % per_stage;
  RankLayout layout{rank / per_stage, stages, local % tp, tp, local / tp, ep, {}};
  for (int64_t r = 0; r < ep; ++r) {  // checks the whole assignment
    auto mine = e.experts_of(r, ep);
    if (r == layout.ep_rank) layout.experts = std::move(mine);
  }
  return layout;
}

ExpertRole expert_role(const ShardPlan& plan, std::string_view name) {
  if (!plan.experts) return {};
  const auto segs = segments(name);
  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    if (segs[i] != plan.experts->segment) continue;
    if (i + 2 == segs.size() && !is_number(segs[i + 1])) return {ExpertRole::kStacked, -1};
    if (is_number(segs[i + 1])) {
      const std::string_view digits = segs[i + 1];
      return {ExpertRole::kPerExpert, digits.size() > 18 ? std::numeric_limits<int64_t>::max()
                                                         : std::stoll(std::string(digits))};
    }
  }
  return {};
}

bool on_rank(const ShardPlan& plan, const RankLayout& layout, std::string_view name) {
  if (stage_of(plan, name) != layout.stage) return false;
  const ExpertRole role = expert_role(plan, name);
  return role.kind != ExpertRole::kPerExpert ||
         std::binary_search(layout.experts.begin(), layout.experts.end(), role.index);
}

int64_t stage_of(const ShardPlan& plan, std::string_view name) {
  if (!plan.pipeline) return 0;
  const PipelinePlan& p = *plan.pipeline;
  const int64_t stages = int64_t(p.stages.size());
  if (const auto layer = layer_index(name, p.layers)) {
    for (int64_t s = 0; s < stages; ++s)
      if (*layer >= p.stages[s].first && *layer < p.stages[s].second) return s;
    return -1;
  }
  std::vector<std::pair<std::string, ShardRule>> first;
  for (const auto& pattern : p.first_stage) first.push_back({pattern, {}});
  return CompiledPatterns(first).find(name) ? 0 : stages - 1;
}

void check_names(const std::vector<std::string>& names, const ShardPlan& plan,
                 std::string_view source, std::vector<std::string>* warnings) {
  std::vector<bool> pattern_used(plan.patterns.size(), false);
  const CompiledPatterns patterns(plan.patterns);
  std::map<std::string_view, bool> explicit_used;
  for (const auto& [name, split] : plan.tensors) explicit_used[name] = false;
  bool any_expert = false;
  for (const std::string& name : names) {
    TS_CHECK(stage_of(plan, name) >= 0, source, "tensor '", name, "': layer ",
             *layer_index(name, plan.pipeline->layers),
             " is on no pipeline stage (stages hold layers ", ranges_text(plan.pipeline->stages),
             "); it would be loaded on no rank");
    const ExpertRole role = expert_role(plan, name);
    if (role.kind != ExpertRole::kNone) any_expert = true;
    TS_CHECK(role.kind != ExpertRole::kPerExpert || role.index < plan.experts->num_experts, source,
             "tensor '", name, "': expert index ", role.index, " is outside the expert plan's ",
             plan.experts->num_experts, " experts (expected an index in [0, ",
             plan.experts->num_experts, "))");
    if (auto it = explicit_used.find(name); it != explicit_used.end()) {
      it->second = true;
      continue;
    }
    if (const auto p = patterns.find(name)) pattern_used[*p] = true;
  }
  auto unused = [&](const std::string& what) {
    const std::string message = std::string("safetensors: ") + std::string(source) + ": " + what;
    TORCH_CHECK(!plan.strict, message, " (strict plan)");
    if (warnings) warnings->push_back(message);
    TORCH_WARN(message);
  };
  for (size_t i = 0; i < plan.patterns.size(); ++i) {
    if (!pattern_used[i])
      unused("shard plan pattern '" + plan.patterns[i].first + "' matches no tensor");
  }
  for (const auto& [name, used] : explicit_used) {
    if (!used)
      unused("shard plan names tensor '" + std::string(name) + "', which is not in the checkpoint");
  }
  if (plan.experts && !any_expert && !names.empty())
    unused("the expert plan's segment '" + plan.experts->segment + "' is in no tensor's name");
}

std::vector<Piece> split_pieces(const std::vector<TensorShape>& tensors, const ShardPlan& plan,
                                const RankLayout& layout, std::string_view source) {
  const int64_t tp_rank = layout.tp_rank, tp_size = layout.tp_size;
  const CompiledPatterns patterns(plan.patterns);
  std::map<std::string_view, const TensorSplit*> explicit_split;
  for (const auto& [name, split] : plan.tensors) explicit_split[name] = &split;
  // Each tensor's rule and its group: the tensors that split alike, led by a reference (the
  // group's `weight`, else its largest tensor). A group is a module; for stacked experts, one
  // projection of it (the name a pattern matched, less any "_<suffix>" its companions add).
  struct Planned {
    const TensorShape* shape;
    ExpertRole role;
    std::string group;
    const ShardRule* rule = nullptr;
  };
  std::vector<Planned> planned;
  planned.reserve(tensors.size());
  for (const TensorShape& t : tensors) {
    Planned p{&t, expert_role(plan, t.name), std::string(module_of(t.name))};
    if (p.role.kind == ExpertRole::kPerExpert &&
        !std::binary_search(layout.experts.begin(), layout.experts.end(), p.role.index))
      continue;  // another EP rank's expert
    std::optional<size_t> found = patterns.find(t.name);
    if (p.role.kind == ExpertRole::kStacked) {
      std::string stem = t.name;
      p.group = stem;
      for (size_t cut;
           !found && (cut = stem.rfind('_')) != std::string::npos && cut > stem.rfind('.');) {
        stem.resize(cut);
        if ((found = patterns.find(stem))) p.group = stem;
      }
    }
    if (found) p.rule = &plan.patterns[*found].second;
    planned.push_back(std::move(p));
  }
  std::map<std::string_view, const TensorShape*> reference;
  auto numel = [](const TensorShape& t) {
    int64_t n = 1;
    for (int64_t s : t.sizes) n *= s;
    return n;
  };
  auto is_weight = [](const std::string& name) {
    return name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  };
  for (const Planned& p : planned) {
    const TensorShape& t = *p.shape;
    const TensorShape*& ref = reference[p.group];
    if (!ref || (is_weight(t.name) && !is_weight(ref->name)) ||
        (is_weight(t.name) == is_weight(ref->name) && numel(t) > numel(*ref)))
      ref = &t;
  }
  // Stacked experts: this rank's rows of dim 0, as runs of consecutive experts.
  std::vector<std::pair<int64_t, int64_t>> expert_rows;
  for (int64_t e : layout.experts) {
    if (!expert_rows.empty() && expert_rows.back().second == e) {
      ++expert_rows.back().second;
    } else {
      expert_rows.push_back({e, e + 1});
    }
  }
  std::vector<Piece> out;
  out.reserve(planned.size());
  for (const Planned& p : planned) {
    const TensorShape& t = *p.shape;
    Piece piece{t.name, t.sizes, {}};
    const bool stacked = p.role.kind == ExpertRole::kStacked;
    if (stacked) {
      const int64_t experts = plan.experts->num_experts;
      TS_CHECK(!t.sizes.empty() && t.sizes[0] == experts, source, "tensor '", t.name,
               "': stacked experts hold one expert per row of dimension 0, expected ", experts,
               " (the expert plan's count), found ",
               t.sizes.empty() ? std::string("a scalar") : "size " + std::to_string(t.sizes[0]));
      if (layout.experts.empty()) continue;  // this EP rank holds no expert
      if (int64_t(layout.experts.size()) != experts) piece.splits.push_back({0, expert_rows});
    }
    if (auto e = explicit_split.find(t.name); e != explicit_split.end()) {
      const TensorSplit& split = *e->second;
      const int64_t rank = int64_t(t.sizes.size());
      TS_CHECK(split.dim >= 0 && split.dim < rank, source, "tensor '", t.name,
               "': explicit split on dimension ", split.dim, ", expected one of its ", rank,
               " dimensions");
      TS_CHECK(!stacked || split.dim != 0, source, "tensor '", t.name,
               "': explicit split on dimension 0, which holds the stacked experts (the expert ",
               "plan splits it); expected a dimension of one expert's matrix (1 or more)");
      TS_CHECK(int64_t(split.ranges.size()) == tp_size, source, "tensor '", t.name,
               "': explicit split gives ", split.ranges.size(), " ranges, expected one per rank (",
               tp_size, ")");
      const int64_t size = t.sizes[split.dim];
      std::vector<std::pair<int64_t, int64_t>> covered;
      for (const auto& [offset, length] : split.ranges) {
        TS_CHECK(offset >= 0 && length >= 0 && offset <= size && length <= size - offset, source,
                 "tensor '", t.name, "': explicit range offset ", offset, " length ", length,
                 " is outside dimension ", split.dim, " of size ", size);
        covered.push_back({offset, offset + length});
      }
      std::sort(covered.begin(), covered.end());
      int64_t reach = 0;
      for (const auto& [begin, end] : covered) {
        TS_CHECK(begin <= reach, source, "tensor '", t.name, "': explicit split leaves [", reach,
                 ", ", begin, ") of dimension ", split.dim, " on no rank");
        reach = std::max(reach, end);
      }
      TS_CHECK(reach == size, source, "tensor '", t.name, "': explicit split leaves [", reach, ", ",
               size, ") of dimension ", split.dim, " on no rank");
      const auto& [offset, length] = split.ranges[tp_rank];
      if (offset != 0 || length != size)
        piece.splits.push_back({split.dim, {{offset, offset + length}}});
      out.push_back(std::move(piece));
      continue;
    }
    const ShardRule* rule = p.rule;
    // A stacked tensor's rule is one expert's: its dimensions start at 1.
    const int64_t dim = rule && split_dim(rule->style) >= 0 ? split_dim(rule->style) + stacked : -1;
    const TensorShape& ref = *reference.at(p.group);
    if (dim >= 0 && int64_t(ref.sizes.size()) > dim && tp_size > 1) {
      const int64_t size = ref.sizes[dim];
      // Every rank's ranges are computed (and so checked), not only this one's.
      const auto all = rule_ranges(*rule, size, tp_size, source, ref.name, dim);
      std::optional<std::vector<std::pair<int64_t, int64_t>>> mine;
      for (int64_t r = 0; r < tp_size; ++r) {
        auto ranges = &t == &ref
                          ? std::optional(all[r])
                          : follow(t.sizes, ref.sizes.size(), dim, size, all[r], source, t.name);
        if (r == tp_rank) mine = std::move(ranges);
      }
      if (mine) piece.splits.push_back({dim, std::move(*mine)});
    }
    out.push_back(std::move(piece));
  }
  return out;
}

}  // namespace distributed

std::vector<Piece> plan_for_rank(const std::vector<TensorShape>& tensors, const ShardPlan& plan,
                                 int64_t rank, int64_t world_size, std::string_view source,
                                 std::vector<std::string>* warnings) {
  const auto layout = distributed::rank_layout(plan, rank, world_size, source);
  std::vector<std::string> names;
  for (const TensorShape& t : tensors) names.push_back(t.name);
  distributed::check_names(names, plan, source, warnings);
  std::vector<TensorShape> mine;
  for (const TensorShape& t : tensors)
    if (distributed::on_rank(plan, layout, t.name)) mine.push_back(t);
  return distributed::split_pieces(mine, plan, layout, source);
}

}  // namespace torch::safetensors
