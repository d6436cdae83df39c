#include "engine/attention_pages.h"

#include <algorithm>

#include "storage/bytes.h"
#include "storage/check.h"

namespace flashlm::engine {

uint32_t PageAttention::Keep(uint32_t len) const {
  const uint64_t n_pages = CeilDiv(len, page_tokens_);
  const uint64_t keep = CeilDiv(budget_.Keep(len), page_tokens_);
  return static_cast<uint32_t>(std::clamp<uint64_t>(keep, 1, n_pages));
}

uint32_t PageAttention::SelectPages(uint32_t len, uint32_t n_pages, std::span<const float> bounds,
                                    std::span<uint32_t> pages) const {
  CHECK_EQ(n_pages, CeilDiv(len, page_tokens_));
  CHECK_EQ(bounds.size() + 1, n_pages);
  const uint32_t keep = Keep(len);
  const uint32_t earlier = n_pages - 1;
  for (uint32_t i = 0; i < earlier; ++i) pages[i] = i;
  if (keep - 1 < earlier) {
    std::nth_element(pages.begin(), pages.begin() + (keep - 1), pages.begin() + earlier,
                     [&](uint32_t a, uint32_t b) {
                       return bounds[a] > bounds[b] || (bounds[a] == bounds[b] && a < b);
                     });
    std::sort(pages.begin(), pages.begin() + (keep - 1));
  }
  pages[keep - 1] = n_pages - 1;  // the query's own page, last (the highest index)
  return keep;
}

}  // namespace flashlm::engine
