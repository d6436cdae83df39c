// TopNAttention: KCache's selection rule as an AttentionPolicy. Of the softmaxed scores of one
// query head over positions [0, len), keeps the N highest (ties: the lower position first),
// N = `count`, or ceil(percent/100 x len), at least 1 and at most len. The Transformer then sums
// only those positions' V rows, each weighted by its probability divided by the kept
// probabilities' total (renormalised, as KCache does); when N reaches len it is exact attention,
// bit for bit. Stateless after construction; Select is const and thread-safe, allocates nothing.
#ifndef FLASHLM_ENGINE_ATTENTION_TOPN_H_
#define FLASHLM_ENGINE_ATTENTION_TOPN_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "engine/transformer.h"
#include "storage/status.h"

namespace flashlm::engine {

struct TopNSpec {
  uint32_t count = 0;  // positions kept; 0 with percent 0: all (exact)
  double percent = 0;  // (0, 100]: that share of the context instead
  bool all() const { return count == 0 && percent == 0; }
  // "all", "64" or "5%". Errors: InvalidArgument naming the forms.
  static Result<TopNSpec> Parse(std::string_view text);
  std::string ToString() const;
};

class TopNAttention final : public AttentionPolicy {
 public:
  explicit TopNAttention(const TopNSpec& spec) : spec_(spec) {}
  // Positions kept out of `len`.
  uint32_t Keep(uint32_t len) const;
  uint32_t Select(uint32_t layer, uint32_t sequence, std::span<const float> probs,
                  std::span<uint32_t> selected) const override;

 private:
  TopNSpec spec_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_ATTENTION_TOPN_H_
