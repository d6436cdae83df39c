// LmdbEnv: a small typed wrapper over one LMDB environment holding one unnamed database of
// byte-string keys to byte-string values. LMDB stays private to storage/lmdb_env.cc.
//
// The environment is a single file (MDB_NOSUBDIR): `path` itself, plus "<path>-lock" when opened
// writable. Read-only opens use MDB_NOLOCK so that a store on a read-only medium opens, and
// must not run alongside a writer (stores are written once, by repack, then only read).
//
// Ownership: an LmdbEnv owns the environment; a ReadTxn / WriteTxn borrows it and must end
// before it. Views returned by ReadTxn::Get / ForEach live until the transaction ends.
// Thread-safety: one transaction belongs to one thread; at most one WriteTxn at a time.
#ifndef FLASHLM_STORAGE_LMDB_ENV_H_
#define FLASHLM_STORAGE_LMDB_ENV_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

class LmdbEnv;

class ReadTxn {
 public:
  ReadTxn(ReadTxn&& other) noexcept;
  ReadTxn& operator=(ReadTxn&&) = delete;
  ~ReadTxn();

  // The value stored under `key`; the view lives until this transaction ends.
  // Errors: NotFound naming the key, IoError.
  Result<ConstByteSpan> Get(std::string_view key) const;

  // Calls fn(key, value) for every key starting with `prefix`, in key order, until fn returns
  // false. Views live until this transaction ends. Errors: IoError.
  Status ForEach(std::string_view prefix,
                 const std::function<bool(std::string_view, ConstByteSpan)>& fn) const;

 private:
  friend class LmdbEnv;
  ReadTxn(void* txn, unsigned dbi) : txn_(txn), dbi_(dbi) {}
  void* txn_;     // MDB_txn*
  unsigned dbi_;  // MDB_dbi
};

class WriteTxn {
 public:
  WriteTxn(WriteTxn&& other) noexcept;
  WriteTxn& operator=(WriteTxn&&) = delete;
  // Aborts unless Commit() succeeded.
  ~WriteTxn();

  // Stores `value` under `key` (replacing). Errors: InvalidArgument (empty or over-long key),
  // ResourceExhausted (map full), IoError.
  Status Put(std::string_view key, ConstByteSpan value);
  Status Put(std::string_view key, std::string_view value) { return Put(key, AsBytes(value)); }
  // Commits and makes the transaction unusable. With the env's default flags, a successful commit
  // is durable (fsync'd). Errors: IoError, ResourceExhausted.
  Status Commit();

 private:
  friend class LmdbEnv;
  WriteTxn(void* txn, unsigned dbi) : txn_(txn), dbi_(dbi) {}
  void* txn_;     // MDB_txn*, null once committed or aborted
  unsigned dbi_;  // MDB_dbi
};

class LmdbEnv {
 public:
  struct Options {
    bool read_only = true;
    bool create = false;                   // create the file when absent (needs !read_only)
    uint64_t map_size_bytes = 1ull << 30;  // upper bound on the database size (writers)
    // Writers: fsync on commit. false (MDB_NOSYNC) only where durability does not matter (fuzz
    // targets and tests that write thousands of catalogs).
    bool sync = true;
  };

  // Opens the environment file at `path`. Before LMDB maps an existing file, its two meta pages
  // are read and checked (LMDB magic and data version, a sane page size) and the file must hold
  // every page the newer meta page declares: a cut-short file is Corruption, never a SIGBUS.
  // Errors: NotFound (absent and !create), Corruption (not a regular file, not an LMDB file,
  // version mismatch, cut short), IoError.
  static Result<std::unique_ptr<LmdbEnv>> Open(const std::string& path, const Options& options);
  ~LmdbEnv();
  LmdbEnv(const LmdbEnv&) = delete;
  LmdbEnv& operator=(const LmdbEnv&) = delete;

  Result<ReadTxn> BeginRead() const;
  // Errors: FailedPrecondition on a read-only env.
  Result<WriteTxn> BeginWrite();

 private:
  LmdbEnv(void* env, unsigned dbi, bool read_only) : env_(env), dbi_(dbi), read_only_(read_only) {}
  void* env_;     // MDB_env*
  unsigned dbi_;  // MDB_dbi
  bool read_only_;
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_LMDB_ENV_H_
