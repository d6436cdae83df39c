// Helpers for the layout tests: reading a file into memory, building small GGUF files (valid or
// deliberately broken) byte by byte, and writing a tiny valid LLaMA GGUF with GgufWriter.
#ifndef FLASHLM_TESTS_LAYOUT_LAYOUT_TEST_UTIL_H_
#define FLASHLM_TESTS_LAYOUT_LAYOUT_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "layout/dtype.h"
#include "layout/gguf_format.h"
#include "layout/gguf_writer.h"
#include "layout/llama_tensors.h"
#include "layout/model_config.h"

namespace flashlm::layout::testing {

inline std::vector<std::byte> ReadFileBytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
  return b;
}

inline void WriteFileBytes(const std::filesystem::path& p, const std::vector<std::byte>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Little-endian byte builder for hand-made (often broken) files.
struct Bytes {
  std::vector<std::byte> b;
  template <typename T>
  Bytes& Put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  Bytes& Str(const std::string& s) {
    Put<uint64_t>(s.size());
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Bytes& Raw(const std::string& s) {
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Bytes& Pad(size_t alignment) {
    while (b.size() % alignment) b.push_back(std::byte{0});
    return *this;
  }
};

inline ModelConfig TinyConfig() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 300;
  c.max_seq_len = 128;
  return c;
}

// Writes a tiny llama GGUF with deterministic weights (value = f(seed, tensor, index)).
// `edit` may change the tensor list (names/shapes) or metadata before writing, to make it bad.
struct TinyGgufSpec {
  ModelConfig config = TinyConfig();
  DType dtype = DType::kF32;
  std::string architecture = "llama";
  std::function<void(std::vector<TensorInfo>&)> edit_tensors;
  std::vector<GgufKV> extra_metadata;
};

inline float TinyWeight(size_t tensor, uint64_t i) {
  return static_cast<float>(static_cast<int>((tensor * 131 + i * 7919) % 2001) - 1000) / 4096.0f;
}

inline Status WriteTinyGguf(const std::filesystem::path& path, const TinyGgufSpec& spec) {
  const ModelConfig& c = spec.config;
  GgufWriter w;
  const std::string a = spec.architecture;
  w.AddMetadata("general.architecture", GgufValue::Str(a));
  w.AddMetadata(a + ".embedding_length", GgufValue::U32(c.dim));
  w.AddMetadata(a + ".feed_forward_length", GgufValue::U32(c.hidden_dim));
  w.AddMetadata(a + ".block_count", GgufValue::U32(c.n_layers));
  w.AddMetadata(a + ".attention.head_count", GgufValue::U32(c.n_heads));
  w.AddMetadata(a + ".attention.head_count_kv", GgufValue::U32(c.n_kv_heads));
  w.AddMetadata(a + ".context_length", GgufValue::U32(c.max_seq_len));
  w.AddMetadata(a + ".attention.layer_norm_rms_epsilon", GgufValue::F32(c.norm_eps));
  w.AddMetadata(a + ".rope.freq_base", GgufValue::F32(c.rope_theta));
  for (const GgufKV& kv : spec.extra_metadata) w.AddMetadata(kv.key, kv.value);
  std::vector<TensorInfo> tensors = ExpectedLlamaTensors(c);
  if (spec.edit_tensors) spec.edit_tensors(tensors);
  for (TensorInfo& t : tensors) {
    t.dtype = t.shape.size() == 1 ? DType::kF32 : spec.dtype;
    w.AddTensor(t.name, t.dtype, t.shape);
  }
  RETURN_IF_ERROR(w.Begin(path.string()));
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorInfo& t = tensors[k];
    std::vector<float> row(t.cols());
    std::vector<std::byte> q(RowBytes(t.dtype, t.cols()));
    for (uint64_t r = 0; r < t.rows(); ++r) {
      for (uint64_t i = 0; i < t.cols(); ++i) row[i] = TinyWeight(k, r * t.cols() + i);
      RETURN_IF_ERROR(QuantizeRow(t.dtype, row, q));
      RETURN_IF_ERROR(w.Append(q));
    }
  }
  return w.Finish();
}

}  // namespace flashlm::layout::testing

#endif  // FLASHLM_TESTS_LAYOUT_LAYOUT_TEST_UTIL_H_
