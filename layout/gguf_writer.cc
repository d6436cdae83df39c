#include "layout/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_set>

namespace flashlm::layout {
namespace {

constexpr size_t kOutBufBytes = 4 << 20;

template <typename T>
void Put(std::vector<std::byte>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void PutString(std::vector<std::byte>& out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  out.insert(out.end(), p, p + s.size());
}

}  // namespace

void AppendGgufValue(const GgufValue& v, std::vector<std::byte>& out) {
  switch (v.type) {
    case GgufType::kU8:
      Put<uint8_t>(out, static_cast<uint8_t>(v.u));
      return;
    case GgufType::kI8:
      Put<int8_t>(out, static_cast<int8_t>(v.i));
      return;
    case GgufType::kU16:
      Put<uint16_t>(out, static_cast<uint16_t>(v.u));
      return;
    case GgufType::kI16:
      Put<int16_t>(out, static_cast<int16_t>(v.i));
      return;
    case GgufType::kU32:
      Put<uint32_t>(out, static_cast<uint32_t>(v.u));
      return;
    case GgufType::kI32:
      Put<int32_t>(out, static_cast<int32_t>(v.i));
      return;
    case GgufType::kU64:
      Put<uint64_t>(out, v.u);
      return;
    case GgufType::kI64:
      Put<int64_t>(out, v.i);
      return;
    case GgufType::kF32:
      Put<float>(out, static_cast<float>(v.f));
      return;
    case GgufType::kF64:
      Put<double>(out, v.f);
      return;
    case GgufType::kBool:
      Put<uint8_t>(out, v.u ? 1 : 0);
      return;
    case GgufType::kString:
      PutString(out, v.s);
      return;
    case GgufType::kArray:
      Put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      Put<uint64_t>(out, v.count);
      if (v.elem_type == GgufType::kString) {
        for (const std::string& s : v.strings) PutString(out, s);
      } else if (v.elem_type == GgufType::kArray) {
        for (const GgufValue& a : v.arrays) AppendGgufValue(a, out);
      } else {
        out.insert(out.end(), v.raw.begin(), v.raw.end());
      }
      return;
  }
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!tmp_path_.empty() && !finished_) ::unlink(tmp_path_.c_str());
}

void GgufWriter::AddMetadata(std::string key, GgufValue value) {
  metadata_.push_back(GgufKV{std::move(key), std::move(value)});
}

void GgufWriter::AddTensor(std::string name, DType dtype, std::vector<uint64_t> shape) {
  Tensor t{std::move(name), dtype, std::move(shape), 0};
  if (!t.shape.empty()) {
    uint64_t rows = 1;
    for (size_t d = 0; d + 1 < t.shape.size(); ++d) rows *= t.shape[d];
    t.size_bytes = rows * RowBytes(dtype, t.shape.back());
  }
  tensors_.push_back(std::move(t));
}

uint64_t GgufWriter::TensorBytes(size_t index) const { return tensors_[index].size_bytes; }

Status GgufWriter::Begin(const std::string& path) {
  if (fd_ >= 0 || finished_) return FailedPreconditionError("GgufWriter::Begin called twice");
  if (!IsPowerOfTwo(alignment_)) return InvalidArgumentError("GGUF alignment not a power of 2");
  std::unordered_set<std::string> seen;
  for (const GgufKV& kv : metadata_) {
    if (!seen.insert(kv.key).second) {
      return InvalidArgumentError("GGUF writer: duplicate metadata key " + kv.key);
    }
  }
  seen.clear();
  for (const Tensor& t : tensors_) {
    if (!seen.insert(t.name).second) {
      return InvalidArgumentError("GGUF writer: duplicate tensor " + t.name);
    }
    if (t.shape.empty() || t.shape.size() > 4) {
      return InvalidArgumentError("GGUF writer: tensor " + t.name + " needs 1 to 4 dimensions");
    }
    for (uint64_t d : t.shape) {
      if (d == 0) return InvalidArgumentError("GGUF writer: tensor " + t.name + " has a 0 dim");
    }
    if (t.shape.back() % DTypeBlockValues(t.dtype) != 0) {
      return InvalidArgumentError("GGUF writer: tensor " + t.name + " rows are not whole " +
                                  std::string(DTypeName(t.dtype)) + " blocks");
    }
  }
  std::vector<std::byte> h;
  Put<uint32_t>(h, kGgufMagic);
  Put<uint32_t>(h, 3);
  Put<uint64_t>(h, tensors_.size());
  bool has_alignment = false;
  for (const GgufKV& kv : metadata_) has_alignment |= kv.key == "general.alignment";
  Put<uint64_t>(h,
                metadata_.size() + (has_alignment || alignment_ == kGgufDefaultAlignment ? 0 : 1));
  for (const GgufKV& kv : metadata_) {
    PutString(h, kv.key);
    Put<uint32_t>(h, static_cast<uint32_t>(kv.value.type));
    AppendGgufValue(kv.value, h);
  }
  if (!has_alignment && alignment_ != kGgufDefaultAlignment) {
    PutString(h, "general.alignment");
    Put<uint32_t>(h, static_cast<uint32_t>(GgufType::kU32));
    Put<uint32_t>(h, alignment_);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    PutString(h, t.name);
    Put<uint32_t>(h, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) Put<uint64_t>(h, *it);
    Put<uint32_t>(h, static_cast<uint32_t>(GgmlFromDType(t.dtype)));
    Put<uint64_t>(h, offset);
    offset = AlignUp(offset + t.size_bytes, alignment_);
  }
  h.resize(AlignUp(h.size(), alignment_), std::byte{0});

  path_ = path;
  tmp_path_ = path + ".tmp";
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int e = errno;
    tmp_path_.clear();
    return ErrnoError("create " + path + ".tmp", e);
  }
  out_buf_.reserve(kOutBufBytes);
  RETURN_IF_ERROR(WriteAll(h));
  // Zero-byte tensors do not exist (dims are > 0), so current_ always points at a real tensor.
  return Status::Ok();
}

Status GgufWriter::WriteAll(ConstByteSpan bytes) {
  while (!bytes.empty()) {
    if (out_buf_.size() == kOutBufBytes || (out_buf_.empty() && bytes.size() >= kOutBufBytes)) {
      ConstByteSpan chunk = out_buf_.empty() ? bytes : ConstByteSpan(out_buf_);
      size_t done = 0;
      while (done < chunk.size()) {
        const ssize_t n = ::write(fd_, chunk.data() + done, chunk.size() - done);
        if (n < 0) {
          if (errno == EINTR) continue;
          return ErrnoError("write " + tmp_path_, errno);
        }
        done += static_cast<size_t>(n);
      }
      if (out_buf_.empty()) return Status::Ok();  // wrote `bytes` directly
      out_buf_.clear();
      continue;
    }
    const size_t k = std::min(bytes.size(), kOutBufBytes - out_buf_.size());
    out_buf_.insert(out_buf_.end(), bytes.begin(), bytes.begin() + k);
    bytes = bytes.subspan(k);
  }
  return Status::Ok();
}

Status GgufWriter::WritePadding(uint64_t n) {
  static constexpr std::byte kZeros[64] = {};
  while (n > 0) {
    const uint64_t k = std::min<uint64_t>(n, sizeof(kZeros));
    RETURN_IF_ERROR(WriteAll(ConstByteSpan(kZeros, k)));
    n -= k;
  }
  return Status::Ok();
}

Status GgufWriter::Append(ConstByteSpan bytes) {
  if (fd_ < 0) return FailedPreconditionError("GgufWriter::Append before Begin");
  while (!bytes.empty()) {
    if (current_ >= tensors_.size()) {
      return FailedPreconditionError("GgufWriter: more tensor bytes than declared");
    }
    const Tensor& t = tensors_[current_];
    const uint64_t k = std::min<uint64_t>(bytes.size(), t.size_bytes - current_done_);
    RETURN_IF_ERROR(WriteAll(bytes.first(k)));
    bytes = bytes.subspan(k);
    current_done_ += k;
    if (current_done_ == t.size_bytes) {
      if (current_ + 1 < tensors_.size()) {
        RETURN_IF_ERROR(WritePadding(AlignUp(t.size_bytes, alignment_) - t.size_bytes));
      }
      ++current_;
      current_done_ = 0;
    }
  }
  return Status::Ok();
}

Status GgufWriter::Finish() {
  if (fd_ < 0) return FailedPreconditionError("GgufWriter::Finish before Begin");
  if (current_ != tensors_.size()) {
    return FailedPreconditionError("GgufWriter: tensor " + tensors_[current_].name +
                                   " is incomplete");
  }
  // Flush the coalescing buffer.
  size_t done = 0;
  while (done < out_buf_.size()) {
    const ssize_t n = ::write(fd_, out_buf_.data() + done, out_buf_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write " + tmp_path_, errno);
    }
    done += static_cast<size_t>(n);
  }
  out_buf_.clear();
  if (::fsync(fd_) != 0) return ErrnoError("fsync " + tmp_path_, errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return ErrnoError("close " + tmp_path_, errno);
  }
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoError("rename " + tmp_path_ + " to " + path_, errno);
  }
  finished_ = true;
  return Status::Ok();
}

}  // namespace flashlm::layout
