// MemoryCheckpoint: a layout::Checkpoint held in memory, built from generated tensors. A real
// implementation of the interface (not a mock) for repack and store tests; optionally fails
// ReadTensor for one named tensor to exercise failed repacks.
#ifndef FLASHLM_TESTS_LAYOUT_MEMORY_CHECKPOINT_H_
#define FLASHLM_TESTS_LAYOUT_MEMORY_CHECKPOINT_H_

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "layout/checkpoint.h"
#include "storage/check.h"

namespace flashlm::layout::testing {

class MemoryCheckpoint : public Checkpoint {
 public:
  std::string_view format() const override { return "memory"; }
  const ModelConfig& config() const override { return config_; }
  const Vocab& vocab() const override { return vocab_; }
  const std::vector<TensorInfo>& tensors() const override { return infos_; }
  Status ReadTensor(const TensorInfo& info, ByteSpan out) override {
    if (info.name == fail_tensor_) return CorruptionError("injected failure reading " + info.name);
    auto it = data_.find(info.name);
    if (it == data_.end()) return NotFoundError("no tensor " + info.name);
    if (out.size() != it->second.size()) return InvalidArgumentError("wrong size for " + info.name);
    std::memcpy(out.data(), it->second.data(), out.size());
    return Status::Ok();
  }

  // Adds a tensor of `dtype` whose f32 values are random in [-1, 1) (seeded by name).
  void AddTensor(const std::string& name, DType dtype, std::vector<uint64_t> shape) {
    TensorInfo info{name, dtype, std::move(shape)};
    std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(name)));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<std::byte> bytes(info.size_bytes());
    std::vector<float> row(info.cols());
    const uint64_t rb = RowBytes(dtype, info.cols());
    for (uint64_t r = 0; r < info.rows(); ++r) {
      for (float& v : row) v = dist(rng);
      CHECK_OK(QuantizeRow(dtype, row, ByteSpan(bytes).subspan(r * rb, rb)));
    }
    data_[name] = std::move(bytes);
    infos_.push_back(std::move(info));
  }

  // Adds an all-zero tensor (compresses well).
  void AddZeroTensor(const std::string& name, DType dtype, std::vector<uint64_t> shape) {
    TensorInfo info{name, dtype, std::move(shape)};
    std::vector<float> row(info.cols(), 0.0f);
    std::vector<std::byte> bytes(info.size_bytes());
    const uint64_t rb = RowBytes(dtype, info.cols());
    for (uint64_t r = 0; r < info.rows(); ++r) {
      CHECK_OK(QuantizeRow(dtype, row, ByteSpan(bytes).subspan(r * rb, rb)));
    }
    data_[name] = std::move(bytes);
    infos_.push_back(std::move(info));
  }

  // A small LLaMA: dim, hidden (not a multiple of 32 when asked), n_layers, vocab.
  static MemoryCheckpoint Llama(uint32_t dim, uint32_t hidden, uint32_t n_layers, uint32_t vocab,
                                DType dtype) {
    MemoryCheckpoint c;
    c.config_.dim = dim;
    c.config_.hidden_dim = hidden;
    c.config_.n_layers = n_layers;
    c.config_.n_heads = 4;
    c.config_.n_kv_heads = 2;
    c.config_.head_dim = dim / 4;
    c.config_.vocab_size = vocab;
    c.config_.max_seq_len = 256;
    c.config_.rope_theta = 500000.0f;
    c.config_.tied_embeddings = false;
    c.AddTensor("token_embd.weight", dtype, {vocab, dim});
    for (uint32_t l = 0; l < n_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      c.AddTensor(b + "attn_norm.weight", DType::kF32, {dim});
      c.AddTensor(b + "attn_q.weight", dtype, {dim, dim});
      c.AddTensor(b + "attn_k.weight", dtype, {dim / 2, dim});
      c.AddTensor(b + "attn_v.weight", dtype, {dim / 2, dim});
      c.AddTensor(b + "attn_output.weight", dtype, {dim, dim});
      c.AddTensor(b + "ffn_norm.weight", DType::kF32, {dim});
      c.AddTensor(b + "ffn_gate.weight", dtype, {hidden, dim});
      c.AddTensor(b + "ffn_down.weight", dtype, {dim, hidden});
      c.AddTensor(b + "ffn_up.weight", dtype, {hidden, dim});
    }
    c.AddTensor("output_norm.weight", DType::kF32, {dim});
    c.AddTensor("output.weight", dtype, {vocab, dim});
    c.vocab_.kind = Vocab::Kind::kSentencePiece;
    for (uint32_t i = 0; i < vocab; ++i) {
      c.vocab_.tokens.push_back(i == 7 ? std::string("\xff\xfe bad utf8", 11)
                                       : "tok" + std::to_string(i));
      c.vocab_.scores.push_back(-0.5f * static_cast<float>(i));
      c.vocab_.types.push_back(i < 3 ? Vocab::kControl : Vocab::kNormal);
    }
    c.vocab_.merges = {"a b", "c d"};
    c.vocab_.pad_id = 5;
    return c;
  }

  void FailOn(std::string name) { fail_tensor_ = std::move(name); }
  ModelConfig& mutable_config() { return config_; }

 private:
  ModelConfig config_;
  Vocab vocab_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, std::vector<std::byte>> data_;
  std::string fail_tensor_;
};

}  // namespace flashlm::layout::testing

#endif  // FLASHLM_TESTS_LAYOUT_MEMORY_CHECKPOINT_H_
