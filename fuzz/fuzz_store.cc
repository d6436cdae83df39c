// Fuzzes the store catalog: every record StoreReader::Open interprets (header, config, layout,
// vocab, extent table, tensor directory, FFN layers, permutations, hot sets) and the reads that
// follow from an accepted catalog.
//
// The input is a list of catalog records, each `u8 key length, key, u32 value length (LE),
// value`, written into a well-formed LMDB catalog and sealed (catalog.sum), so the fuzzer reaches
// the record validation behind the seal: a store written by a faulty writer. A record keyed
// "\x01data" is the data file instead. Damage to the catalog file's own bytes is the seal's job
// (tests/layout/store_test.cc flips every byte of it); LMDB's page parser is not fuzzed here,
// since no unsealed bytes ever reach it.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/fuzz_util.h"
#include "layout/catalog_seal.h"
#include "layout/store_format.h"
#include "layout/store_reader.h"
#include "storage/lmdb_env.h"
#include "storage/logging.h"

namespace {

namespace fs = std::filesystem;

const fs::path& StoreDir() {
  static const fs::path dir = [] {
    const fs::path d =
        fs::temp_directory_path() / ("flashlm-fuzz-store-" + std::to_string(getpid()));
    fs::create_directories(d);
    flashlm::SetLogLevel(flashlm::LogLevel::kError);  // the buffered fallback on tmpfs
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashlm;
  const fs::path& dir = StoreDir();
  std::error_code ec;
  fs::remove(dir / "catalog.mdb", ec);
  fs::remove(dir / "catalog.mdb-lock", ec);
  std::string data_file;
  {
    storage::LmdbEnv::Options o;
    o.read_only = false;
    o.create = true;
    o.sync = false;
    o.map_size_bytes = 64u << 20;
    auto env = storage::LmdbEnv::Open((dir / "catalog.mdb").string(), o);
    if (!env.ok()) return 0;
    auto txn = (*env)->BeginWrite();
    if (!txn.ok()) return 0;
    size_t at = 0;
    for (int records = 0; records < 4096 && at < size; ++records) {
      const size_t klen = data[at++];
      if (size - at < klen + 4) break;
      const std::string key(reinterpret_cast<const char*>(data + at), klen);
      at += klen;
      uint32_t vlen;
      std::memcpy(&vlen, data + at, 4);
      at += 4;
      vlen = static_cast<uint32_t>(std::min<size_t>(vlen, size - at));
      const ConstByteSpan value(reinterpret_cast<const std::byte*>(data + at), vlen);
      at += vlen;
      if (key == "\001data") {
        data_file.assign(reinterpret_cast<const char*>(value.data()), value.size());
      } else {
        txn->Put(key, value).IgnoreError();  // empty or over-long keys are refused: skip them
      }
    }
    if (!txn->Commit().ok()) return 0;
  }
  fs::remove(dir / "catalog.mdb-lock", ec);
  std::ofstream(dir / layout::DataFileName(0), std::ios::binary | std::ios::trunc)
      .write(data_file.data(), static_cast<std::streamsize>(data_file.size()));
  if (!layout::WriteCatalogSeal(dir.string()).ok()) return 0;

  layout::StoreReadOptions ro;
  ro.backend = storage::BackendKind::kPread;
  ro.direct = false;
  auto store = layout::StoreReader::Open(dir.string(), ro);
  if (!store.ok()) return 0;
  fuzz::ReadEverything(**store);
  (*store)->VerifyAll().IgnoreError();
  for (uint64_t i = 0; i < (*store)->extent_count() && i < 64; ++i) {
    (void)(*store)->DescribeExtent(i);
  }
  return 0;
}
