// Device-aware loading: the staging ring (run on the CPU with always_stage, pageable buffers: the
// same code as the device path), dtype conversion on load, streaming in file order, the populated
// mapping, and the errors for devices this LibTorch cannot reach. CUDA cases run where LibTorch
// sees a GPU (scripts/test_gpu.sh) and skip elsewhere.
#include <gtest/gtest.h>
#include <unistd.h>

#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch_safetensors/all.h>

#include "api/handle.h"
#include "test_dtypes.h"
#include "test_util.h"

namespace ts = torch::safetensors;
using at::indexing::Slice;
using ts_test::error_of;
using ts_test::TempDir;

namespace {

// One tensor of every dtype torch can express, with arbitrary bit patterns.
ts::NamedTensors every_dtype() {
  ts::NamedTensors out;
  for (const c10::ScalarType type : ts_test::kTorchDtypes) {
    out.emplace_back(std::string(c10::toString(type)), ts_test::random_bytes_as(type, {3, 8}));
  }
  return out;
}

void expect_bits_equal(const at::Tensor& a, const at::Tensor& b, const std::string& name) {
  EXPECT_TRUE(ts_test::same_bits(a.cpu(), b.cpu())) << name;
}

ts::LoadOptions staged_on_cpu(uint64_t ring_bytes = uint64_t(2) << 20) {
  ts::LoadOptions options;
  options.staging_bytes = ring_bytes;
  return ts::detail::LoadOptionsTesting::stage_on_cpu(options);
}

}  // namespace

TEST(StagingRing, EveryDtypeThroughTheRing) {
  TempDir dir;
  const auto tensors = every_dtype();
  ts::save(tensors, dir.file("all.safetensors"));
  for (const auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const ts::File file(dir.file("all.safetensors"), staged_on_cpu().with_backend(backend));
    const ts::TensorDict loaded = file.tensors();
    for (const auto& [name, tensor] : tensors) {
      expect_bits_equal(loaded[name], tensor, name);
      expect_bits_equal(file.tensor(name), tensor, name);
    }
  }
}

TEST(StagingRing, FilesMuchLargerThanTheRing) {
  TempDir dir;
  ts::NamedTensors tensors;
  for (int i = 0; i < 12; ++i) {  // 12 x 4 MiB through a 2 MiB ring of 1 MiB buffers
    tensors.emplace_back("w" + std::to_string(i), torch::randn({1 << 20}));
  }
  tensors.emplace_back("empty", torch::zeros({0, 4}));
  tensors.emplace_back("scalar", torch::tensor(3.5));
  ts::save(tensors, dir.file("big.safetensors"));
  const ts::TensorDict loaded = ts::load(dir.file("big.safetensors"), staged_on_cpu());
  for (const auto& [name, tensor] : tensors) expect_bits_equal(loaded[name], tensor, name);
}

TEST(StagingRing, SlicesAndIntervals) {
  TempDir dir;
  const at::Tensor w = torch::randn({64, 48, 5});
  ts::save(ts::NamedTensors{{"w", w}}, dir.file("w.safetensors"));
  const ts::File file(dir.file("w.safetensors"), staged_on_cpu());
  expect_bits_equal(file.slice("w", {Slice(3, 40, 3), Slice(), 2}),
                    w.index({Slice(3, 40, 3), Slice(), 2}), "slice");
  expect_bits_equal(file.slice_intervals("w", 1, {{0, 8}, {20, 30}}),
                    torch::cat({w.narrow(1, 0, 8), w.narrow(1, 20, 10)}, 1), "intervals");
}

TEST(StagingRing, ShardedCheckpointsInOnePass) {
  TempDir dir;
  ts::NamedTensors tensors;
  for (int i = 0; i < 8; ++i)
    tensors.emplace_back("layer" + std::to_string(i), torch::randn({300, 300}));
  ts::save_sharded(tensors, dir.path(), ts::ShardOptions().with_max_shard_size("1MB"));
  const ts::Checkpoint ckpt(dir.path(), staged_on_cpu());
  ASSERT_GT(ckpt.shard_files().size(), 2u);
  const ts::TensorDict loaded = ckpt.tensors();
  for (const auto& [name, tensor] : tensors) expect_bits_equal(loaded[name], tensor, name);
}

TEST(Streaming, ForEachInFileOrderOnEveryPath) {
  TempDir dir;
  ts::NamedTensors tensors;
  for (int i = 0; i < 10; ++i)
    tensors.emplace_back("t" + std::to_string(i), torch::randn({1000 * (i + 1)}));
  tensors.emplace_back("z_empty", torch::zeros({0}));
  ts::save_sharded(tensors, dir.path(), ts::ShardOptions().with_max_shard_size("60KB"));
  const ts::Checkpoint reference(dir.path());
  std::vector<std::string> file_order;
  for (const auto& shard : reference.shard_files()) {
    for (const auto& name : ts::File(dir.file(shard)).keys()) file_order.push_back(name);
  }
  std::vector<ts::LoadOptions> paths = {
      ts::LoadOptions(), ts::LoadOptions().with_backend(ts::Backend::kPread), staged_on_cpu()};
  paths[1].staging_bytes = 30'000;  // pread streams in batches of about this size
  for (const auto& options : paths) {
    std::vector<std::string> seen;
    ts::Checkpoint(dir.path(), options).for_each([&](const std::string& name, at::Tensor t) {
      seen.push_back(name);
      expect_bits_equal(t, reference.tensor(name), name);
    });
    EXPECT_EQ(seen, file_order);
  }
  // An exception from the consumer stops the load and comes out as it is.
  int calls = 0;
  EXPECT_THROW(
      ts::Checkpoint(dir.path(), staged_on_cpu()).for_each([&](const std::string&, at::Tensor) {
        if (++calls == 3) throw std::runtime_error("enough");
      }),
      std::runtime_error);
  EXPECT_EQ(calls, 3);
}

TEST(DtypeOnLoad, CastAfterTheRawCopyOnEveryPath) {
  TempDir dir;
  const at::Tensor bf16 = torch::randn({64, 32}).to(at::kBFloat16);
  const at::Tensor fp8 = torch::randn({16, 16}).to(at::kFloat8_e4m3fn);
  ts::save(ts::NamedTensors{{"b", bf16}, {"f", fp8}}, dir.file("m.safetensors"));
  for (ts::LoadOptions options :
       {ts::LoadOptions(), ts::LoadOptions().with_backend(ts::Backend::kPread), staged_on_cpu()}) {
    options.with_dtype(at::kHalf).with_cast_fp8();
    const ts::File file(dir.file("m.safetensors"), options);
    EXPECT_TRUE(torch::equal(file.tensor("b"), bf16.to(at::kHalf)));
    EXPECT_TRUE(torch::equal(file.tensors()["f"], fp8.to(at::kHalf)));
    EXPECT_TRUE(torch::equal(file.slice("b", {Slice(0, 8)}), bf16.narrow(0, 0, 8).to(at::kHalf)));
  }
  const ts::TensorDict as_bf16 = ts::load(
      dir.file("m.safetensors"), ts::LoadOptions().with_dtype(at::kBFloat16).with_cast_fp8());
  EXPECT_TRUE(torch::equal(as_bf16["f"], fp8.to(at::kBFloat16)));
  // Without cast_fp8, FP8 (a quantized weight whose scale is elsewhere) keeps its dtype.
  const ts::TensorDict kept =
      ts::load(dir.file("m.safetensors"), ts::LoadOptions().with_dtype(at::kFloat));
  EXPECT_EQ(kept["f"].scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(kept["b"].scalar_type(), at::kFloat);
}

// The dtype-on-load rule: only floating tensors are cast. Integer buffers (position ids), GPTQ's
// packed I32 words, bools, F8_E8M0 block scales and F4 keep their dtype and bits, on every path
// (views, pread, the staging ring, streaming, modules).
TEST(DtypeOnLoad, IntegersAndPackedWordsKeepTheirDtype) {
  TempDir dir;
  const at::Tensor position_ids = torch::arange(4096, torch::kLong).view({1, 4096});
  const at::Tensor qweight = torch::randint(INT32_MIN, INT32_MAX, {64, 32}, torch::kInt);
  const at::Tensor mask = torch::rand({8}) > 0.5;
  const at::Tensor scales = ts_test::random_bytes_as(at::kFloat8_e8m0fnu, {4, 2});
  const at::Tensor f4 = ts_test::random_bytes_as(at::kFloat4_e2m1fn_x2, {4, 4});
  const at::Tensor weight = torch::randn({8, 8});
  ts::save({{"position_ids", position_ids},
            {"qweight", qweight},
            {"mask", mask},
            {"scales", scales},
            {"f4", f4},
            {"weight", weight}},
           dir.file("m.safetensors"));
  auto check = [&](const ts::TensorDict& loaded, const std::string& path) {
    SCOPED_TRACE(path);
    EXPECT_EQ(loaded["position_ids"].scalar_type(), at::kLong);
    EXPECT_TRUE(torch::equal(loaded["position_ids"], position_ids));
    EXPECT_EQ(loaded["qweight"].scalar_type(), at::kInt);
    EXPECT_TRUE(torch::equal(loaded["qweight"], qweight));
    EXPECT_TRUE(torch::equal(loaded["mask"], mask));
    EXPECT_TRUE(ts_test::same_bits(loaded["scales"], scales));
    EXPECT_TRUE(ts_test::same_bits(loaded["f4"], f4));
    EXPECT_EQ(loaded["weight"].scalar_type(), at::kBFloat16);
    EXPECT_TRUE(torch::equal(loaded["weight"], weight.to(at::kBFloat16)));
  };
  for (ts::LoadOptions options :
       {ts::LoadOptions(), ts::LoadOptions().with_backend(ts::Backend::kPread), staged_on_cpu()}) {
    options.with_dtype(at::kBFloat16);
    check(ts::load(dir.file("m.safetensors"), options), "load");
    const ts::File file(dir.file("m.safetensors"), options);
    EXPECT_EQ(file.tensor("qweight").scalar_type(), at::kInt);
    EXPECT_EQ(file.slice("position_ids", {0, Slice(0, 16)}).scalar_type(), at::kLong);
    ts::TensorDict streamed;
    file.for_each([&](const std::string& name, at::Tensor t) { streamed.insert(name, t); });
    check(streamed, "for_each");
  }
  // A dtype that is not floating cannot be asked for: it would turn every float into integers.
  EXPECT_THROW(ts::File(dir.file("m.safetensors"), ts::LoadOptions().with_dtype(at::kInt)),
               c10::ValueError);
}

TEST(Populate, MappedTensorsAreResidentAndEqual) {
  TempDir dir;
  const at::Tensor w = torch::randn({1 << 20});
  ts::save(ts::NamedTensors{{"w", w}}, dir.file("w.safetensors"));
  const ts::TensorDict loaded =
      ts::load(dir.file("w.safetensors"), ts::LoadOptions().with_populate());
  EXPECT_TRUE(torch::equal(loaded["w"], w));
  // Still zero-copy: a view of the mapping.
  EXPECT_NE(ts_test::mapped_file_of(loaded["w"].data_ptr()).find("w.safetensors"),
            std::string::npos);
}

TEST(DeviceErrors, UnreachableDevicesFailAtOpen) {
  TempDir dir;
  ts::save(ts::NamedTensors{{"w", torch::ones({2})}}, dir.file("w.safetensors"));
  const int gpus = torch::cuda::device_count();
  const c10::Device missing(c10::kCUDA, c10::DeviceIndex(gpus + 6));
  const std::string error = error_of(
      [&] { ts::File f(dir.file("w.safetensors"), ts::LoadOptions().with_device(missing)); });
  EXPECT_NE(error.find("w.safetensors: cannot load to cuda:" + std::to_string(gpus + 6)),
            std::string::npos)
      << error;
  if (gpus == 0) {
    EXPECT_NE(error.find("no CUDA"), std::string::npos) << error;
  }
}

TEST(DeviceCuda, WholeFilesSlicesShardsAndStreamingToTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const auto tensors = every_dtype();
  ts::save(tensors, dir.file("all.safetensors"));
  for (const auto backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    const ts::LoadOptions options =
        ts::LoadOptions().with_device(c10::kCUDA).with_backend(backend).with_staging_bytes(2 << 20);
    const ts::TensorDict loaded = ts::load(dir.file("all.safetensors"), options);
    for (const auto& [name, tensor] : tensors) {
      EXPECT_TRUE(loaded[name].is_cuda()) << name;
      expect_bits_equal(loaded[name], tensor, name);
    }
  }
  ts::NamedTensors big;
  for (int i = 0; i < 6; ++i) big.emplace_back("w" + std::to_string(i), torch::randn({1 << 21}));
  ts::save_sharded(big, dir.file("sharded"), ts::ShardOptions().with_max_shard_size("20MB"));
  const ts::Checkpoint ckpt(dir.file("sharded"),
                            ts::LoadOptions().with_device(c10::kCUDA).with_dtype(at::kBFloat16));
  std::vector<std::string> seen;
  ckpt.for_each([&](const std::string& name, at::Tensor t) {
    seen.push_back(name);
    EXPECT_TRUE(t.is_cuda());
    EXPECT_TRUE(
        torch::equal(t.cpu(), ts::Checkpoint(dir.file("sharded")).tensor(name).to(at::kBFloat16)));
  });
  EXPECT_EQ(seen.size(), big.size());
  const at::Tensor part = ckpt.slice("w1", {Slice(100, 200)});
  EXPECT_TRUE(part.is_cuda());
  EXPECT_TRUE(torch::equal(part.cpu(), big[1].second.narrow(0, 100, 100).to(at::kBFloat16)));
}

TEST(ModuleOnDevice, ParametersAreFilledInPlaceThroughTheRing) {
  TempDir dir;
  torch::nn::Linear saved(64, 32);
  ts::save(*saved, dir.file("m.safetensors"));
  torch::nn::Linear target(64, 32);
  const void* weight_memory = target->weight.data_ptr();
  const ts::ModuleLoadPlan plan(
      ts::NamedTensors{{"weight", target->weight}, {"bias", target->bias}},
      ts::Checkpoint(dir.file("m.safetensors"), staged_on_cpu()));
  ASSERT_TRUE(plan.report().ok());
  plan.apply();
  EXPECT_EQ(target->weight.data_ptr(), weight_memory);  // filled, not replaced
  EXPECT_TRUE(torch::equal(target->weight, saved->weight));
  EXPECT_TRUE(torch::equal(target->bias, saved->bias));
}

TEST(ModuleOnDevice, CudaParametersAreFilledInPlace) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  torch::nn::Linear saved(256, 128);
  ts::save(*saved, dir.file("m.safetensors"));
  torch::nn::Linear target(256, 128);
  target->to(torch::kCUDA);
  const void* weight_memory = target->weight.data_ptr();
  ts::load(*target, dir.file("m.safetensors"), c10::Device(c10::kCUDA));
  EXPECT_EQ(target->weight.data_ptr(), weight_memory);
  EXPECT_TRUE(torch::equal(target->weight.cpu(), saved->weight));
}

// A tensor too large for the destination's memory (a sparse file claiming 1 TiB): the load says
// which tensor failed, and what it had allocated is freed (nothing leaks under ASan).
TEST(DeviceErrors, OutOfMemoryNamesTheTensor) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer allocators abort on impossible allocations instead of failing them";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  GTEST_SKIP() << "sanitizer allocators abort on impossible allocations instead of failing them";
#endif
#endif
  TempDir dir;
  const std::string path = dir.file("huge.safetensors");
  const uint64_t huge = uint64_t(1) << 40;
  const std::string json =
      "{\"small\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
      "\"huge\":{\"dtype\":\"U8\",\"shape\":[" +
      std::to_string(huge) + "],\"data_offsets\":[16," + std::to_string(16 + huge) + "]}}";
  ts_test::write_file(path, ts_test::make_safetensors(json, std::string(16, '\0')));
  ASSERT_EQ(::truncate(path.c_str(), off_t(8 + json.size() + 16 + huge)), 0);
  const std::string error = error_of([&] { ts::load(path, staged_on_cpu()); });
  EXPECT_NE(error.find("cannot allocate 1099511627776 bytes on cpu for tensor 'huge'"),
            std::string::npos)
      << error;
}
