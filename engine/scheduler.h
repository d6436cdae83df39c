// Scheduler: continuous batching of many generation requests over one Session.
//
// A bounded queue of submitted requests and `slots` sequence slots (the session's KV cache holds
// one sequence per slot). Run() loops on the caller's thread, which must be the thread that
// opened the session (its io_uring rings belong to that thread), until Stop():
//   admit     move queued requests into free slots (Generator::Begin, a Sampler of its own);
//   reap      requests cancelled by their client or past their deadline end and free their slot;
//   batch     one TokenBatch: every decoding slot's last token first, then prompt chunks of the
//             slots still prefilling, up to the model's max_batch tokens (a long prompt joins in
//             chunks between decode steps instead of stalling the others);
//   forward   ONE Transformer::Forward for the batch: each streamed weight is read once for all;
//   advance   each slot's Generator samples from its row of the logits; text goes to the
//             request; a finished request frees its slot at once.
// A Forward error (a corrupt extent, an I/O error) fails the requests of that batch with the
// status; the scheduler keeps serving.
//
// Threads: Submit, Stop, Snapshot and the Request's calls may be called from any thread. The
// Session must not be used by anyone else while Run runs. Bounds: the queue and the
// slots are fixed at Create; each request's buffers are sized when it is admitted.
#ifndef FLASHLM_ENGINE_SCHEDULER_H_
#define FLASHLM_ENGINE_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "storage/status.h"

namespace flashlm::engine {

struct RequestSpec {
  std::vector<int32_t> prompt;  // non-empty, shorter than the context
  uint32_t max_new_tokens = 16;
  std::vector<std::string> stop_strings;
  SamplerOptions sampling;
  bool ignore_eos = false;   // keep going past EOS (benchmarks want a fixed token count)
  uint64_t deadline_ns = 0;  // storage::NowNs() clock; 0: none
};

// What a request has been through; final once done.
struct RequestResult {
  GenerationStats stats;
  Status status;              // not OK: the engine failed it (the text so far is still there)
  std::string finish_reason;  // "stop" (EOS or a stop string), "length", "cancelled", "timeout"
  double queue_ms = 0;        // submitted to admitted
  // The forward passes that carried this request's tokens, and what they read from flash (shared
  // with the other sequences of each pass).
  uint64_t passes = 0;
  uint64_t pass_bytes_read = 0, pass_reads = 0;
  double pass_io_wait_ms = 0, pass_ms = 0;
  double mean_batch_sequences = 0;  // sequences per pass it rode in
};

// One request, shared by its submitter (an HTTP handler) and the scheduler. Thread-safe.
class Request {
 public:
  // Waits until there is new text or the request is done, or timeout_ms passes; moves the new
  // text into `text` (replacing its content). Returns true when the request is done and every
  // piece of its text has been taken.
  bool Wait(std::string& text, uint32_t timeout_ms);
  // Asks the scheduler to end the request (a client went away); idempotent.
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  // The outcome; call once Wait returned true.
  RequestResult result() const;
  const std::vector<int32_t>& prompt() const { return spec_.prompt; }
  // Ids generated so far (the whole list once done).
  std::vector<int32_t> generated() const;

 private:
  friend class Scheduler;
  explicit Request(RequestSpec spec) : spec_(std::move(spec)) {}
  RequestSpec spec_;
  std::atomic<bool> cancelled_{false};
  uint64_t submitted_ns_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;  // text produced and not yet taken
  std::vector<int32_t> generated_;
  bool done_ = false;
  RequestResult result_;
};

struct SchedulerOptions {
  uint32_t slots = 1;       // sequences decoded together (<= the model's max_sequences)
  uint32_t queue_max = 64;  // requests waiting for a slot
};

// Counters for /metrics, since Create.
struct SchedulerSnapshot {
  uint32_t queued = 0, active = 0, slots = 0, queue_max = 0;
  uint64_t admitted = 0, finished = 0, failed = 0, cancelled = 0, timed_out = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0;
  uint64_t steps = 0;           // forward passes the scheduler ran
  uint64_t step_sequences = 0;  // sum over passes of sequences in the pass
  uint64_t step_tokens = 0;     // sum over passes of tokens in the pass
  double forward_ms = 0;        // time inside Forward
  EngineStats engine;           // the session's counters
};

class Scheduler {
 public:
  // A scheduler over `session` (not owned; must outlive the scheduler).
  // Errors: InvalidArgument (0 slots, more slots than the model's max_sequences, queue_max 0).
  static Result<std::unique_ptr<Scheduler>> Create(Session& session,
                                                   const SchedulerOptions& options);
  // Precondition: Run has returned (or never ran).
  ~Scheduler() = default;

  // The loop (see above), on the thread that opened the session, until Stop(); then running
  // requests end as cancelled and queued ones fail.
  void Run();
  // Makes Run return after its current pass, and Submit refuse; idempotent, any thread.
  void Stop();

  // Queues a request. Errors: InvalidArgument (empty prompt, prompt not shorter than the
  // context, 0 max_new_tokens), ResourceExhausted (the queue is full), Unavailable-like
  // FailedPrecondition (the scheduler is stopping).
  Result<std::shared_ptr<Request>> Submit(RequestSpec spec);
  SchedulerSnapshot Snapshot() const;
  uint32_t context() const { return context_; }

 private:
  struct Slot {
    std::shared_ptr<Request> request;
    std::unique_ptr<Generator> generator;
    std::unique_ptr<Sampler> sampler;
    uint32_t batch_first = 0, batch_n = 0;  // its tokens in the current batch
    uint64_t passes = 0, sequences_sum = 0;
  };
  Scheduler(Session& session, const SchedulerOptions& options);
  void Admit(Slot& slot, std::shared_ptr<Request> request);
  // Ends the slot's request with its generator's stats; frees the slot.
  void Finish(Slot& slot, const char* finish_reason, const Status& status);
  void Deliver(Slot& slot, std::string_view text, int32_t token);

  Session& session_;
  SchedulerOptions options_;
  uint32_t context_ = 0;
  std::vector<Slot> slots_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;  // at most queue_max
  bool stopping_ = false;
  SchedulerSnapshot snap_;
  EngineStats before_, after_;  // the engine's counters around a pass (capacity kept)

  // The batch, sized at Create (max_batch tokens, slots logit rows).
  std::vector<int32_t> tokens_;
  std::vector<uint32_t> positions_, sequences_, logits_for_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_SCHEDULER_H_
