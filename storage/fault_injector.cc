#include "storage/fault_injector.h"

#include <cerrno>
#include <chrono>
#include <thread>

namespace flashlm::storage {

FaultInjector::FaultInjector(const FaultConfig& config) : config_(config), rng_(config.seed) {}

bool FaultInjector::Roll(double rate) {
  if (rate <= 0 || counts_.total() >= config_.faults_max) return false;
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < rate;
}

int64_t FaultInjector::FilterResult(uint64_t length_bytes, uint64_t granularity_bytes,
                                    int64_t result) {
  uint32_t sleep_us = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (config_.delay_rate > 0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < config_.delay_rate) {
      ++counts_.delays;
      sleep_us = config_.delay_us;
    }
    if (result > 0) {
      if (Roll(config_.eio_rate)) {
        ++counts_.eios;
        result = -EIO;
      } else if (Roll(config_.eagain_rate)) {
        ++counts_.eagains;
        result = -EAGAIN;
      } else if (Roll(config_.eintr_rate)) {
        ++counts_.eintrs;
        result = -EINTR;
      } else {
        uint64_t g = granularity_bytes == 0 ? 1 : granularity_bytes;
        uint64_t granules = static_cast<uint64_t>(result) / g;
        if (granules >= 2 && Roll(config_.short_read_rate)) {
          ++counts_.short_reads;
          uint64_t keep = std::uniform_int_distribution<uint64_t>(1, granules - 1)(rng_);
          result = static_cast<int64_t>(keep * g);
        }
      }
    }
  }
  if (sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  return result;
}

bool FaultInjector::MaybeFailRequest() {
  uint32_t sleep_us = 0;
  bool fail = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (config_.delay_rate > 0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < config_.delay_rate) {
      ++counts_.delays;
      sleep_us = config_.delay_us;
    }
    if (Roll(config_.eio_rate)) {
      ++counts_.eios;
      fail = true;
    }
  }
  if (sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  return fail;
}

bool FaultInjector::MaybeFlipBit(ByteSpan data) {
  if (data.empty()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (!Roll(config_.bit_flip_rate)) return false;
  uint64_t bit = std::uniform_int_distribution<uint64_t>(0, data.size() * 8 - 1)(rng_);
  data[bit / 8] ^= std::byte{static_cast<unsigned char>(1u << (bit % 8))};
  ++counts_.bit_flips;
  return true;
}

FaultCounts FaultInjector::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

}  // namespace flashlm::storage
