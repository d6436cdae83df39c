// PageAttention: Quest's page selection (Tang et al., 2024) as a PageSelectionPolicy. A query at
// position len - 1 attends to K = ceil(N / P) pages of P positions, N = the position budget of
// --kv-topn (a count, or a share of len: TopNAttention::Keep), at least 1 and at most all
// ceil(len / P) pages: the page holding the query's own position always (it is the one being
// written and holds the most recent tokens), and the K - 1 earlier pages with the highest upper
// bound of the query's score (KeyPageBound over the page's per-channel K min/max; ties: the lower
// page first). Attention is then exact over those pages' positions (softmax over them only),
// so a budget that covers every page is exact attention, bit for bit.
//
// Why min/max: for a query q and any key k of the page, q . k <= sum_j max(q_j min_j,
// q_j max_j), so a page is ranked by the most its best position could score — a page whose
// bound is below another's best score cannot hold a higher score. The bound is loose when a
// page's keys spread (it is reached only by a key at a corner of the box), which is what limits
// the selection's precision at small budgets (docs/benchmarks.md quality table).
// Stateless after construction; SelectPages is const, thread-safe and allocates nothing.
#ifndef FLASHLM_ENGINE_ATTENTION_PAGES_H_
#define FLASHLM_ENGINE_ATTENTION_PAGES_H_

#include <cstdint>
#include <span>

#include "engine/attention_topn.h"
#include "engine/transformer.h"

namespace flashlm::engine {

class PageAttention final : public PageSelectionPolicy {
 public:
  // `budget`: the positions attended (--kv-topn; all: every page); `page_tokens`: P (> 0).
  PageAttention(const TopNSpec& budget, uint32_t page_tokens)
      : budget_(budget), page_tokens_(page_tokens) {}
  // Pages attended by a query at position len - 1 (len > 0).
  uint32_t Keep(uint32_t len) const;
  uint32_t SelectPages(uint32_t len, uint32_t n_pages, std::span<const float> bounds,
                       std::span<uint32_t> pages) const override;

 private:
  TopNAttention budget_;
  uint32_t page_tokens_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_ATTENTION_PAGES_H_
