#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>

#include "storage/io_stats.h"

namespace flashlm::engine {
namespace {
// OpenAI's finish_reason for a generation that ended by itself.
const char* FinishReason(const GenerationStats& stats) {
  return stats.stop_reason == "length" || stats.stop_reason == "context" ? "length" : "stop";
}

double MsBetween(uint64_t t0_ns, uint64_t t1_ns) {
  return t1_ns > t0_ns ? static_cast<double>(t1_ns - t0_ns) / 1e6 : 0.0;
}
}  // namespace

bool Request::Wait(std::string& text, uint32_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
               [&] { return done_ || !pending_.empty(); });
  text.clear();
  text.swap(pending_);
  return done_;
}

RequestResult Request::result() const {
  std::lock_guard<std::mutex> lock(mu_);
  return result_;
}

std::vector<int32_t> Request::generated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generated_;
}

Scheduler::Scheduler(Session& session, const SchedulerOptions& options)
    : session_(session), options_(options) {}

Result<std::unique_ptr<Scheduler>> Scheduler::Create(Session& session,
                                                     const SchedulerOptions& options) {
  Transformer& model = session.model();
  if (options.slots == 0 || options.queue_max == 0) {
    return InvalidArgumentError("scheduler: slots and queue_max must be positive");
  }
  if (options.slots > model.kv_cache().max_sequences()) {
    return InvalidArgumentError("scheduler: " + std::to_string(options.slots) +
                                " slots but the session holds " +
                                std::to_string(model.kv_cache().max_sequences()) + " sequences");
  }
  if (options.slots > model.max_batch()) {
    return InvalidArgumentError("scheduler: more slots than tokens per forward pass");
  }
  std::unique_ptr<Scheduler> s(new Scheduler(session, options));
  s->context_ = model.max_context();
  s->slots_.resize(options.slots);
  for (Slot& slot : s->slots_) {
    slot.generator = std::make_unique<Generator>(model, session.tokenizer());
  }
  s->tokens_.resize(model.max_batch());
  s->positions_.resize(model.max_batch());
  s->sequences_.resize(model.max_batch());
  s->logits_for_.resize(options.slots);
  s->snap_.slots = options.slots;
  s->snap_.queue_max = options.queue_max;
  return s;
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

Result<std::shared_ptr<Request>> Scheduler::Submit(RequestSpec spec) {
  if (spec.prompt.empty()) return InvalidArgumentError("empty prompt");
  if (spec.prompt.size() >= context_) {
    return InvalidArgumentError("prompt of " + std::to_string(spec.prompt.size()) +
                                " tokens does not fit the context of " + std::to_string(context_));
  }
  if (spec.max_new_tokens == 0) return InvalidArgumentError("max_new_tokens must be positive");
  // Checks the sampling options here, in the caller's thread, so that a bad one is the caller's
  // error (Sampler::Create names it).
  if (auto s = Sampler::Create(1, spec.sampling); !s.ok()) return s.status();
  std::shared_ptr<Request> r(new Request(std::move(spec)));
  r->submitted_ns_ = storage::NowNs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return FailedPreconditionError("the scheduler is stopping");
    if (queue_.size() >= options_.queue_max) {
      return ResourceExhaustedError("the request queue is full (" +
                                    std::to_string(options_.queue_max) + " waiting)");
    }
    queue_.push_back(r);
    snap_.queued = static_cast<uint32_t>(queue_.size());
  }
  cv_.notify_all();
  return r;
}

SchedulerSnapshot Scheduler::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snap_;
}

void Scheduler::Admit(Slot& slot, std::shared_ptr<Request> request) {
  slot.request = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++snap_.active;
  }
  slot.passes = 0;
  slot.sequences_sum = 0;
  Request& r = *slot.request;
  {
    std::lock_guard<std::mutex> lock(r.mu_);
    r.result_.queue_ms = MsBetween(r.submitted_ns_, storage::NowNs());
    r.generated_.reserve(r.spec_.max_new_tokens);
  }
  auto sampler = Sampler::Create(session_.config().vocab_size, r.spec_.sampling);
  if (!sampler.ok()) {
    Finish(slot, "error", sampler.status());
    return;
  }
  slot.sampler = std::move(*sampler);
  GenerateOptions g;
  g.max_new_tokens = r.spec_.max_new_tokens;
  g.stop_strings = r.spec_.stop_strings;
  g.ignore_eos = r.spec_.ignore_eos;
  g.sequence = static_cast<uint32_t>(&slot - slots_.data());
  if (Status st = slot.generator->Begin(r.spec_.prompt, g, *slot.sampler); !st.ok()) {
    Finish(slot, "error", st);
  }
}

void Scheduler::Deliver(Slot& slot, std::string_view text, int32_t token) {
  Request& r = *slot.request;
  {
    std::lock_guard<std::mutex> lock(r.mu_);
    r.pending_.append(text);
    if (token >= 0 && token != session_.tokenizer().eos_id()) r.generated_.push_back(token);
  }
  if (!text.empty()) r.cv_.notify_all();
}

void Scheduler::Finish(Slot& slot, const char* finish_reason, const Status& status) {
  Request& r = *slot.request;
  const GenerationStats& stats = slot.generator->stats();
  // The counters first: whoever sees the request done sees them counted.
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string_view reason(finish_reason);
    if (!status.ok()) {
      ++snap_.failed;
    } else if (reason == "cancelled") {
      ++snap_.cancelled;
    } else if (reason == "timeout") {
      ++snap_.timed_out;
    } else {
      ++snap_.finished;
    }
    --snap_.active;
    snap_.prompt_tokens += stats.prompt_tokens;
    snap_.generated_tokens += stats.generated_tokens;
  }
  {
    std::lock_guard<std::mutex> lock(r.mu_);
    r.result_.stats = stats;
    r.result_.status = status;
    r.result_.finish_reason = finish_reason;
    r.result_.passes = slot.passes;
    r.result_.mean_batch_sequences =
        slot.passes ? static_cast<double>(slot.sequences_sum) / slot.passes : 0.0;
    r.done_ = true;
  }
  r.cv_.notify_all();
  slot.request.reset();
  slot.sampler.reset();
}

// The loop's phases are named in the header: admit, reap, batch, forward, advance.
void Scheduler::Run() {
  Transformer& model = session_.model();
  const uint32_t vocab = session_.config().vocab_size;
  const uint32_t max_batch = model.max_batch();
  std::vector<Slot*> in_batch;
  in_batch.reserve(slots_.size());
  while (true) {
    // Admit.
    std::vector<std::shared_ptr<Request>> admitted, dropped;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto any_active = [&] {
        for (const Slot& s : slots_) {
          if (s.request) return true;
        }
        return false;
      };
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || any_active(); });
      if (stopping_) break;
      // Requests still waiting whose client left or whose deadline passed leave the queue now.
      const uint64_t now = storage::NowNs();
      for (auto it = queue_.begin(); it != queue_.end();) {
        Request& r = **it;
        const bool cancelled = r.cancelled_.load(std::memory_order_relaxed);
        if (cancelled || (r.spec_.deadline_ns && now >= r.spec_.deadline_ns)) {
          ++(cancelled ? snap_.cancelled : snap_.timed_out);
          {
            std::lock_guard<std::mutex> request_lock(r.mu_);
            r.result_.finish_reason = cancelled ? "cancelled" : "timeout";
          }
          dropped.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      uint32_t free_slots = 0;
      for (const Slot& s : slots_) free_slots += s.request ? 0 : 1;
      while (free_slots > 0 && !queue_.empty()) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
        --free_slots;
      }
      snap_.queued = static_cast<uint32_t>(queue_.size());
      snap_.admitted += admitted.size();
    }
    for (auto& r : dropped) {
      {
        std::lock_guard<std::mutex> lock(r->mu_);
        r->result_.queue_ms = MsBetween(r->submitted_ns_, storage::NowNs());
        r->result_.stats.prompt_tokens = static_cast<uint32_t>(r->spec_.prompt.size());
        r->done_ = true;
      }
      r->cv_.notify_all();
    }
    dropped.clear();
    for (auto& r : admitted) {
      for (Slot& s : slots_) {
        if (!s.request) {
          Admit(s, std::move(r));
          break;
        }
      }
    }
    // Reap.
    const uint64_t now = storage::NowNs();
    for (Slot& s : slots_) {
      if (!s.request) continue;
      const bool timed_out = s.request->spec_.deadline_ns && now >= s.request->spec_.deadline_ns;
      if (s.request->cancelled_.load(std::memory_order_relaxed) || timed_out) {
        s.generator->Cancel();
        Finish(s, timed_out ? "timeout" : "cancelled", Status::Ok());
      }
    }
    // Batch: decoding slots first (one token each), then prompt chunks in the room left.
    uint32_t n = 0;
    in_batch.clear();
    for (int prefill = 0; prefill < 2; ++prefill) {
      for (Slot& s : slots_) {
        if (!s.request || s.generator->prefilling() != (prefill == 1)) continue;
        const Generator::Input in = s.generator->NextInput(max_batch - n);
        if (in.tokens.empty()) {
          if (s.generator->prefilling()) continue;  // no room left in this pass
          // The step ends the generation without a pass (max tokens, the context's end).
          auto step = s.generator->Advance(0, {});
          if (!step.ok()) {
            Finish(s, "error", step.status());
          } else {
            Deliver(s, step->text, step->token);
            Finish(s, FinishReason(s.generator->stats()), Status::Ok());
          }
          continue;
        }
        const uint32_t seq = static_cast<uint32_t>(&s - slots_.data());
        s.batch_first = n;
        s.batch_n = static_cast<uint32_t>(in.tokens.size());
        for (uint32_t i = 0; i < s.batch_n; ++i) {
          tokens_[n] = in.tokens[i];
          positions_[n] = in.position + i;
          sequences_[n] = seq;
          ++n;
        }
        in_batch.push_back(&s);
      }
    }
    if (n == 0) continue;
    // Forward: the logits rows follow the batch order, which is slot order within each phase;
    // logits_for must be increasing, and it is (each slot's last token, in batch order).
    for (size_t i = 0; i < in_batch.size(); ++i) {
      logits_for_[i] = in_batch[i]->batch_first + in_batch[i]->batch_n - 1;
    }
    TokenBatch batch;
    batch.tokens = std::span<const int32_t>(tokens_.data(), n);
    batch.positions = std::span<const uint32_t>(positions_.data(), n);
    batch.sequences = std::span<const uint32_t>(sequences_.data(), n);
    batch.logits_for = std::span<const uint32_t>(logits_for_.data(), in_batch.size());
    session_.FillStats(&before_);
    const uint64_t t0 = storage::NowNs();
    auto logits = model.Forward(batch);
    const uint64_t t1 = storage::NowNs();
    session_.FillStats(&after_);
    const EngineStats& before = before_;
    const EngineStats& after = after_;
    const uint64_t pass_bytes = after.bytes_read - before.bytes_read;
    const uint64_t pass_reads = after.reads - before.reads;
    const double pass_wait_ms = static_cast<double>(after.io_wait_ns - before.io_wait_ns) / 1e6;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++snap_.steps;
      snap_.step_sequences += in_batch.size();
      snap_.step_tokens += n;
      snap_.forward_ms += MsBetween(t0, t1);
      snap_.engine = after;
    }
    for (size_t i = 0; i < in_batch.size(); ++i) {
      Slot& s = *in_batch[i];
      ++s.passes;
      s.sequences_sum += in_batch.size();
      {
        std::lock_guard<std::mutex> lock(s.request->mu_);
        RequestResult& rr = s.request->result_;
        rr.pass_bytes_read += pass_bytes;
        rr.pass_reads += pass_reads;
        rr.pass_io_wait_ms += pass_wait_ms;
        rr.pass_ms += MsBetween(t0, t1);
      }
      if (!logits.ok()) {
        s.generator->Cancel();
        Finish(s, "error", logits.status());
        continue;
      }
      // Advance.
      auto step = s.generator->Advance(s.batch_n, logits->subspan(uint64_t{i} * vocab, vocab));
      if (!step.ok()) {
        Finish(s, "error", step.status());
        continue;
      }
      Deliver(s, step->text, step->token);
      if (step->done) {
        Finish(s, FinishReason(s.generator->stats()), Status::Ok());
      }
    }
  }
  // Stopping: running requests are cancelled, queued ones fail.
  for (Slot& s : slots_) {
    if (!s.request) continue;
    s.generator->Cancel();
    Finish(s, "cancelled", Status::Ok());
  }
  std::deque<std::shared_ptr<Request>> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rest.swap(queue_);
  }
  for (auto& r : rest) {
    {
      std::lock_guard<std::mutex> lock(r->mu_);
      r->result_.status = FailedPreconditionError("the scheduler stopped");
      r->result_.finish_reason = "error";
      r->done_ = true;
    }
    r->cv_.notify_all();
  }
}

}  // namespace flashlm::engine
