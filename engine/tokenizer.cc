#include "engine/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <queue>

namespace flashlm::engine {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581

// Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes).
size_t Utf8Length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Decodes one code point at s[i] (advancing i); invalid bytes decode as themselves.
uint32_t NextCodePoint(std::string_view s, size_t& i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = Utf8Length(c);
  if (len == 1 || i + len > s.size()) {
    ++i;
    return c;
  }
  uint32_t cp = c & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// "<0x0A>" -> 10, else -1.
int ParseByteToken(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  int v = 0;
  for (char ch : s.substr(3, 2)) {
    v <<= 4;
    if (ch >= '0' && ch <= '9')
      v |= ch - '0';
    else if (ch >= 'A' && ch <= 'F')
      v |= ch - 'A' + 10;
    else if (ch >= 'a' && ch <= 'f')
      v |= ch - 'a' + 10;
    else
      return -1;
  }
  return v;
}

}  // namespace

uint64_t Tokenizer::resident_bytes() const {
  auto str = [](const std::string& s) {
    return sizeof(std::string) + (s.capacity() > 15 ? s.capacity() + 1 : 0);
  };
  constexpr uint64_t kNode = 3 * sizeof(void*);  // a hash node's link, hash and allocator slack
  uint64_t b = sizeof(*this) + vocab_.scores.capacity() * sizeof(float) +
               vocab_.types.capacity() * sizeof(int32_t) + specials_.capacity() * sizeof(int32_t);
  for (const std::string& t : vocab_.tokens) b += 2 * str(t) + kNode + sizeof(int32_t);
  for (const std::string& m : vocab_.merges) b += 2 * str(m) + kNode + sizeof(int32_t);
  b += (ids_.bucket_count() + merge_ranks_.bucket_count() + unicode_to_byte_.bucket_count()) *
       sizeof(void*);
  b += unicode_to_byte_.size() * (kNode + 8);
  for (const std::string& s : byte_to_unicode_) b += str(s);
  return b;
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::Create(const layout::Vocab& vocab) {
  if (vocab.tokens.empty()) return InvalidArgumentError("the model carries no tokenizer");
  if (vocab.kind != layout::Vocab::Kind::kSentencePiece &&
      vocab.kind != layout::Vocab::Kind::kGpt2Bpe) {
    return NotSupportedError("tokenizer kind is not supported");
  }
  const size_t n = vocab.tokens.size();
  if ((!vocab.scores.empty() && vocab.scores.size() != n) ||
      (!vocab.types.empty() && vocab.types.size() != n)) {
    return InvalidArgumentError("vocab scores/types do not match the token count");
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer(vocab));
  layout::Vocab& v = t->vocab_;
  if (v.scores.empty()) v.scores.assign(n, 0.0f);
  if (v.types.empty()) v.types.assign(n, layout::Vocab::kNormal);
  t->ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) t->ids_.emplace(v.tokens[i], static_cast<int32_t>(i));
  t->byte_ids_.fill(-1);
  for (size_t i = 0; i < n; ++i) {
    const int b = ParseByteToken(v.tokens[i]);
    if (b >= 0 && t->byte_ids_[b] < 0) t->byte_ids_[b] = static_cast<int32_t>(i);
    if (v.types[i] == layout::Vocab::kControl || v.types[i] == layout::Vocab::kUserDefined) {
      if (!v.tokens[i].empty()) t->specials_.push_back(static_cast<int32_t>(i));
    }
  }
  std::stable_sort(t->specials_.begin(), t->specials_.end(),
                   [&](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });
  // GPT-2 byte <-> printable code point table.
  {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + extra++;
      AppendUtf8(cp, t->byte_to_unicode_[b]);
      t->unicode_to_byte_[cp] = static_cast<uint8_t>(b);
    }
  }
  for (size_t i = 0; i < v.merges.size(); ++i) {
    t->merge_ranks_.emplace(v.merges[i], static_cast<int32_t>(i));
  }
  return t;
}

int32_t Tokenizer::Find(std::string_view s) const {
  auto it = ids_.find(std::string(s));
  return it == ids_.end() ? -1 : it->second;
}

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < vocab_.types.size() &&
         vocab_.types[id] == layout::Vocab::kControl;
}

void Tokenizer::BytesFallback(std::string_view piece, std::vector<int32_t>& out) const {
  for (char ch : piece) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(ch)];
    out.push_back(id >= 0 ? id : vocab_.unk_id);
  }
}

// SentencePiece BPE: a doubly linked list of symbols (initially code points) and a max-heap of
// candidate merges ordered by score, then by position. A candidate whose symbols changed since
// it was queued is stale and skipped.
void Tokenizer::EncodeSentencePiece(std::string_view raw, bool first_fragment,
                                    std::vector<int32_t>& out) const {
  std::string text;
  text.reserve(raw.size() * 3 + 3);
  if (vocab_.add_space_prefix && first_fragment) text += kSpaceMark;
  for (char ch : raw) {
    if (ch == ' ')
      text += kSpaceMark;
    else
      text += ch;
  }
  struct Symbol {
    int prev, next;
    size_t begin, len;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    const size_t len = std::min(Utf8Length(static_cast<unsigned char>(text[i])), text.size() - i);
    const int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, idx + 1, i, len});
    i += len;
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  struct Bigram {
    int left, right;
    float score;
    size_t len;
  };
  auto cmp = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(cmp)> queue(cmp);
  auto try_add = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    std::string_view s(text.data() + sym[l].begin, sym[l].len + sym[r].len);
    const int32_t id = Find(s);
    if (id < 0) return;
    queue.push({l, r, vocab_.scores[id], s.size()});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i - 1), static_cast<int>(i));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != b.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = 0; i >= 0; i = sym[i].next) {
    std::string_view s(text.data() + sym[i].begin, sym[i].len);
    const int32_t id = Find(s);
    if (id >= 0)
      out.push_back(id);
    else
      BytesFallback(s, out);
  }
}

// Byte-level BPE: pre-split, map bytes to code points, merge by rank.
void Tokenizer::EncodeGpt2(std::string_view text, std::vector<int32_t>& out) const {
  auto cls = [](unsigned char c) {  // 0 space, 1 letter, 2 digit, 3 other
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') return 0;
    if (c >= 0x80 || std::isalpha(c)) return 1;
    if (std::isdigit(c)) return 2;
    return 3;
  };
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    if (text[i] == '\'' && i + 1 < text.size()) {
      bool matched = false;
      for (std::string_view c : {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
        if (text.substr(i, c.size()) == c) {
          words.push_back(text.substr(i, c.size()));
          i += c.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    int c0 = cls(static_cast<unsigned char>(text[i]));
    if (c0 == 0) {
      size_t j = i;
      while (j < text.size() && cls(static_cast<unsigned char>(text[j])) == 0) ++j;
      // \s+(?!\S): leave the last space to prefix the next word.
      if (j < text.size() && j - i > 1 && text[j - 1] == ' ')
        --j;
      else if (j < text.size() && j - i == 1 && text[i] == ' ') {
        ++i;  // a single space joins the next word
        c0 = cls(static_cast<unsigned char>(text[i]));
        goto word;
      }
      words.push_back(text.substr(start, j - start));
      i = j;
      continue;
    }
  word : {
    size_t j = i;
    while (j < text.size() && cls(static_cast<unsigned char>(text[j])) == c0 &&
           !(c0 != 3 && text[j] == '\'')) {
      ++j;
    }
    if (j == i) ++j;
    words.push_back(text.substr(start, j - start));
    i = j;
  }
  }
  std::vector<std::string> parts;
  for (std::string_view w : words) {
    parts.clear();
    for (char ch : w) parts.push_back(byte_to_unicode_[static_cast<unsigned char>(ch)]);
    for (;;) {
      int best = -1, best_rank = 0;
      for (size_t k = 0; k + 1 < parts.size(); ++k) {
        auto it = merge_ranks_.find(parts[k] + " " + parts[k + 1]);
        if (it != merge_ranks_.end() && (best < 0 || it->second < best_rank)) {
          best = static_cast<int>(k);
          best_rank = it->second;
        }
      }
      if (best < 0) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + best + 1);
    }
    for (const std::string& p : parts) {
      const int32_t id = Find(p);
      out.push_back(id >= 0 ? id : vocab_.unk_id);
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
  bool first = true;
  auto encode = [&](std::string_view frag) {
    if (frag.empty()) return;
    if (vocab_.kind == layout::Vocab::Kind::kGpt2Bpe)
      EncodeGpt2(frag, out);
    else
      EncodeSentencePiece(frag, first, out);
    first = false;
  };
  if (!parse_special || specials_.empty()) {
    encode(text);
    return out;
  }
  size_t start = 0, i = 0;
  while (i < text.size()) {
    int32_t hit = -1;
    for (int32_t id : specials_) {
      const std::string& s = vocab_.tokens[id];
      if (text.substr(i, s.size()) == s) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    encode(text.substr(start, i - start));
    out.push_back(hit);
    first = false;
    i += vocab_.tokens[hit].size();
    start = i;
  }
  encode(text.substr(start));
  return out;
}

void Tokenizer::AppendPiece(int32_t id, int32_t previous_id, std::string& out) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) return;
  const int32_t type = vocab_.types[id];
  if (type == layout::Vocab::kControl || type == layout::Vocab::kUnknown ||
      type == layout::Vocab::kUnused) {
    return;
  }
  const std::string& s = vocab_.tokens[id];
  if (vocab_.kind == layout::Vocab::Kind::kGpt2Bpe) {
    for (size_t i = 0; i < s.size();) {
      const uint32_t cp = NextCodePoint(s, i);
      auto it = unicode_to_byte_.find(cp);
      if (it != unicode_to_byte_.end()) out += static_cast<char>(it->second);
    }
    return;
  }
  const int b = ParseByteToken(s);
  if (b >= 0) {
    out += static_cast<char>(b);
    return;
  }
  size_t i = 0;
  if (previous_id == vocab_.bos_id && vocab_.add_space_prefix &&
      s.compare(0, kSpaceMark.size(), kSpaceMark) == 0) {
    i = kSpaceMark.size();  // SentencePiece drops the leading space of the first piece
  }
  while (i < s.size()) {
    if (s.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      out += ' ';
      i += kSpaceMark.size();
    } else {
      out += s[i++];
    }
  }
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    AppendPiece(id, prev, out);
    prev = id;
  }
  return out;
}

std::string_view Utf8Stream::Push(std::string_view bytes) {
  pending_.append(bytes);
  // Find where a trailing incomplete sequence starts (look back at most 3 bytes).
  size_t keep_from = pending_.size();
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(pending_[pending_.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t len = Utf8Length(c);
    if (len > back) keep_from = pending_.size() - back;
    break;
  }
  ready_.assign(pending_, 0, keep_from);
  pending_.erase(0, keep_from);
  return ready_;
}

std::string_view Utf8Stream::Flush() {
  ready_.swap(pending_);
  pending_.clear();
  return ready_;
}

}  // namespace flashlm::engine
