#include "storage/lmdb_env.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace flashlm::storage {
namespace {

Status LmdbError(std::string_view what, int rc) {
  std::string msg = std::string(what) + ": " + mdb_strerror(rc);
  switch (rc) {
    case MDB_NOTFOUND:
      return NotFoundError(msg);
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
      return ResourceExhaustedError(msg);
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
      return CorruptionError(msg);
    case ENOENT:
      return NotFoundError(msg);
    default:
      return IoError(msg);
  }
}

MDB_txn* T(void* p) { return static_cast<MDB_txn*>(p); }

// LMDB 0.9 (data version 1) meta page, 64-bit build: a 16-byte page header (mp_flags at 10),
// then MDB_meta: mm_magic u32, mm_version u32, mm_address, mm_mapsize, mm_dbs[2] (48 bytes each;
// the page size is kept in mm_dbs[0].md_pad), mm_last_pg, mm_txnid. Pages 0 and 1 are metas.
constexpr uint64_t kMetaHeaderBytes = 16;
constexpr uint16_t kPageFlagMeta = 0x08;
constexpr uint32_t kLmdbMagic = 0xBEEFC0DE;
constexpr uint32_t kLmdbDataVersion = 1;
constexpr uint64_t kMetaReadBytes = kMetaHeaderBytes + 136;

// The little-endian T at byte `offset` of `bytes`.
template <typename T>
T Load(const unsigned char* bytes, size_t offset) {
  T v;
  std::memcpy(&v, bytes + offset, sizeof v);
  return v;
}

struct MetaPage {
  uint32_t page_bytes = 0;
  uint64_t last_page = 0;
  uint64_t txnid = 0;
};

// Reads and checks the meta page at `offset`. Errors: Corruption naming what is wrong, IoError.
Result<MetaPage> ReadMeta(int fd, uint64_t offset, const std::string& path) {
  unsigned char b[kMetaReadBytes];
  const ssize_t n = ::pread(fd, b, sizeof b, static_cast<off_t>(offset));
  if (n < 0) return ErrnoError("read " + path, errno);
  auto u16 = [&](size_t o) { return Load<uint16_t>(b, o); };
  auto u32 = [&](size_t o) { return Load<uint32_t>(b, o); };
  auto u64 = [&](size_t o) { return Load<uint64_t>(b, o); };
  const std::string where = "catalog " + path + ": meta page at byte " + std::to_string(offset);
  if (static_cast<size_t>(n) != sizeof b) return CorruptionError(where + " is cut short");
  const uint64_t m = kMetaHeaderBytes;
  if ((u16(10) & kPageFlagMeta) == 0 || u32(m) != kLmdbMagic) {
    return CorruptionError(where + " is not an LMDB meta page");
  }
  if (u32(m + 4) != kLmdbDataVersion) {
    return CorruptionError(where + " has LMDB data version " + std::to_string(u32(m + 4)));
  }
  MetaPage meta;
  meta.page_bytes = u32(m + 24);  // mm_dbs[0].md_pad
  meta.last_page = u64(m + 120);
  meta.txnid = u64(m + 128);
  if (meta.page_bytes < 512 || meta.page_bytes > (1u << 16) ||
      (meta.page_bytes & (meta.page_bytes - 1)) != 0) {
    return CorruptionError(where + " declares a page size of " + std::to_string(meta.page_bytes));
  }
  return meta;
}

// LMDB maps the file and trusts its meta pages: pages past the end of a cut-short file fault
// (SIGBUS) when touched. Before any mapping, check both meta pages (as LMDB will) and that the
// file holds every page the newer one declares.
Status CheckFileAgainstMeta(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  struct stat st;
  Status s = Status::Ok();
  if (::fstat(fd, &st) != 0) {
    s = ErrnoError("stat " + path, errno);
  } else if (!S_ISREG(st.st_mode)) {
    s = CorruptionError("catalog is not a regular file: " + path);
  } else {
    Result<MetaPage> m0 = ReadMeta(fd, 0, path);
    Result<MetaPage> m1 = m0.ok() ? ReadMeta(fd, m0->page_bytes, path) : m0;
    if (!m1.ok()) {
      s = m1.status();
    } else {
      const MetaPage& m = m1->txnid > m0->txnid ? *m1 : *m0;
      const uint64_t need = (m.last_page + 1) * m.page_bytes;
      if (m.last_page < 1 || m.last_page > (uint64_t{1} << 40) ||
          static_cast<uint64_t>(st.st_size) < need) {
        s = CorruptionError("catalog " + path + " is cut short: " + std::to_string(st.st_size) +
                            " bytes, its meta page declares " + std::to_string(m.last_page + 1) +
                            " pages of " + std::to_string(m.page_bytes) + " bytes");
      }
    }
  }
  ::close(fd);
  return s;
}

}  // namespace

ReadTxn::ReadTxn(ReadTxn&& other) noexcept : txn_(other.txn_), dbi_(other.dbi_) {
  other.txn_ = nullptr;
}
ReadTxn::~ReadTxn() {
  if (txn_) mdb_txn_abort(T(txn_));
}

Result<ConstByteSpan> ReadTxn::Get(std::string_view key) const {
  MDB_val k{key.size(), const_cast<char*>(key.data())};
  MDB_val v;
  int rc = mdb_get(T(txn_), dbi_, &k, &v);
  if (rc == MDB_NOTFOUND) return NotFoundError("catalog has no key '" + std::string(key) + "'");
  if (rc != 0) return LmdbError("catalog get '" + std::string(key) + "'", rc);
  return ConstByteSpan(static_cast<const std::byte*>(v.mv_data), v.mv_size);
}

Status ReadTxn::ForEach(std::string_view prefix,
                        const std::function<bool(std::string_view, ConstByteSpan)>& fn) const {
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(T(txn_), dbi_, &cursor);
  if (rc != 0) return LmdbError("catalog cursor", rc);
  MDB_val k{prefix.size(), const_cast<char*>(prefix.data())};
  MDB_val v;
  rc = prefix.empty() ? mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
                      : mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE);
  while (rc == 0) {
    std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!fn(key, ConstByteSpan(static_cast<const std::byte*>(v.mv_data), v.mv_size))) break;
    rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError("catalog iterate", rc);
  return Status::Ok();
}

WriteTxn::WriteTxn(WriteTxn&& other) noexcept : txn_(other.txn_), dbi_(other.dbi_) {
  other.txn_ = nullptr;
}
WriteTxn::~WriteTxn() {
  if (txn_) mdb_txn_abort(T(txn_));
}

Status WriteTxn::Put(std::string_view key, ConstByteSpan value) {
  if (txn_ == nullptr) return FailedPreconditionError("catalog put after commit");
  if (key.empty() || key.size() > 511) {
    return InvalidArgumentError("catalog key must be 1..511 bytes: '" + std::string(key) + "'");
  }
  MDB_val k{key.size(), const_cast<char*>(key.data())};
  MDB_val v{value.size(), const_cast<std::byte*>(value.data())};
  int rc = mdb_put(T(txn_), dbi_, &k, &v, 0);
  if (rc != 0) return LmdbError("catalog put '" + std::string(key) + "'", rc);
  return Status::Ok();
}

Status WriteTxn::Commit() {
  if (txn_ == nullptr) return FailedPreconditionError("catalog commit twice");
  int rc = mdb_txn_commit(T(txn_));
  txn_ = nullptr;  // committed or freed by LMDB either way
  if (rc != 0) return LmdbError("catalog commit", rc);
  return Status::Ok();
}

Result<std::unique_ptr<LmdbEnv>> LmdbEnv::Open(const std::string& path, const Options& options) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT || !options.create || options.read_only) {
      if (errno == ENOENT) return NotFoundError("catalog not found: " + path);
      return ErrnoError("stat " + path, errno);
    }
  } else if (!S_ISREG(st.st_mode)) {
    return CorruptionError("catalog is not a regular file: " + path);
  } else if (st.st_size > 0) {
    RETURN_IF_ERROR(CheckFileAgainstMeta(path));
  } else if (options.read_only) {
    return CorruptionError("catalog " + path + " is empty");
  }
  MDB_env* env = nullptr;
  int rc = mdb_env_create(&env);
  if (rc != 0) return LmdbError("mdb_env_create", rc);
  unsigned flags = MDB_NOSUBDIR;
  if (options.read_only) flags |= MDB_RDONLY | MDB_NOLOCK;
  if (!options.read_only && !options.sync) flags |= MDB_NOSYNC;
  if (!options.read_only) {
    rc = mdb_env_set_mapsize(env, options.map_size_bytes);
    if (rc != 0) {
      mdb_env_close(env);
      return LmdbError("mdb_env_set_mapsize", rc);
    }
  }
  rc = mdb_env_open(env, path.c_str(), flags, 0644);
  if (rc != 0) {
    mdb_env_close(env);
    return LmdbError("open catalog " + path, rc);
  }
  // The unnamed database's handle, opened once and valid for every later transaction.
  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(env, nullptr, options.read_only ? MDB_RDONLY : 0, &txn);
  if (rc != 0) {
    mdb_env_close(env);
    return LmdbError("open catalog " + path, rc);
  }
  MDB_dbi dbi = 0;
  rc = mdb_dbi_open(txn, nullptr, 0, &dbi);
  if (rc == 0)
    rc = mdb_txn_commit(txn);
  else
    mdb_txn_abort(txn);
  if (rc != 0) {
    mdb_env_close(env);
    return LmdbError("open catalog database " + path, rc);
  }
  return std::unique_ptr<LmdbEnv>(new LmdbEnv(env, dbi, options.read_only));
}

LmdbEnv::~LmdbEnv() { mdb_env_close(static_cast<MDB_env*>(env_)); }

Result<ReadTxn> LmdbEnv::BeginRead() const {
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(static_cast<MDB_env*>(env_), nullptr, MDB_RDONLY, &txn);
  if (rc != 0) return LmdbError("catalog read txn", rc);
  return ReadTxn(txn, dbi_);
}

Result<WriteTxn> LmdbEnv::BeginWrite() {
  if (read_only_) return FailedPreconditionError("catalog opened read-only");
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(static_cast<MDB_env*>(env_), nullptr, 0, &txn);
  if (rc != 0) return LmdbError("catalog write txn", rc);
  return WriteTxn(txn, dbi_);
}

}  // namespace flashlm::storage
