// Scheduler on the real stories260K model: requests decoded together in one forward pass per
// step (prompts prefilled in chunks between steps) produce exactly what each produces alone;
// cancellation and deadlines free the slot; a full queue refuses; bad requests are refused.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "storage/io_stats.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

std::unique_ptr<Session> OpenModel(const std::filesystem::path& gguf, uint32_t sequences,
                                   uint32_t max_batch) {
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 256;
  o.transformer.max_sequences = sequences;
  o.transformer.max_batch = max_batch;
  auto s = Session::Open(gguf.string(), o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

struct Outcome {
  std::string text;
  std::vector<int32_t> ids;
  std::string reason;
};

// The request alone: Start + Next on sequence 0, greedy.
Outcome Alone(Session& s, const std::vector<int32_t>& prompt, uint32_t n,
              const std::vector<std::string>& stops) {
  SamplerOptions so;
  so.temperature = 0;
  auto sampler = Sampler::Create(s.config().vocab_size, so);
  EXPECT_TRUE(sampler.ok());
  Generator gen(s.model(), s.tokenizer());
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_strings = stops;
  Outcome out;
  EXPECT_TRUE(gen.Start(prompt, g, **sampler).ok());
  while (true) {
    auto step = gen.Next();
    EXPECT_TRUE(step.ok());
    if (!step.ok()) break;
    out.text.append(step->text);
    if (step->done) break;
  }
  out.ids.assign(gen.ids().begin() + prompt.size(), gen.ids().end());
  out.reason = gen.stats().stop_reason;
  return out;
}

// Runs a scheduler's loop on a thread of its own for the test's duration (the checkpoint's
// weights are in DRAM, so no io_uring ring ties the session to the thread that opened it).
class Running {
 public:
  explicit Running(Scheduler& s) : s_(s), thread_([&s] { s.Run(); }) {}
  ~Running() {
    s_.Stop();
    thread_.join();
  }

 private:
  Scheduler& s_;
  std::thread thread_;
};

// Waits until the request has produced some text (it holds a slot) or is done.
void WaitStarted(Request& r) {
  std::string piece;
  while (piece.empty() && !r.Wait(piece, 1000)) {
  }
}
// Waits until the request is done.
void WaitDone(Request& r) {
  std::string piece;
  while (!r.Wait(piece, 1000)) {
  }
}

Outcome Collect(Request& r) {
  Outcome out;
  std::string piece;
  while (!r.Wait(piece, 1000)) out.text += piece;
  out.text += piece;
  out.ids = r.generated();
  out.reason = r.result().finish_reason;
  return out;
}

TEST(SchedulerTest, BatchedGreedyEqualsEachRequestAlone) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  // max_batch 8: prompts longer than the room left in a pass are prefilled over several passes,
  // next to the other sequences' decode steps.
  auto session = OpenModel(gguf, 3, 8);
  ASSERT_NE(session, nullptr);
  const Tokenizer& tok = session->tokenizer();
  const std::vector<std::string> prompts = {
      "Once upon a time",
      "Lily had a big red ball and she liked to play with it in the park",
      "",
      "The dog",
      "Tom and Sam went to the shop. They wanted to buy a cake for mom",
      "Sue"};
  const std::vector<uint32_t> lengths = {40, 25, 60, 1, 33, 50};
  const std::vector<std::vector<std::string>> stops = {{}, {}, {}, {}, {"."}, {}};
  std::vector<std::vector<int32_t>> ids;
  std::vector<Outcome> alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back(tok.Encode(prompts[i], true));
    alone.push_back(Alone(*session, ids[i], lengths[i], stops[i]));
  }
  SchedulerOptions so;
  so.slots = 3;
  so.queue_max = 8;
  auto scheduler = Scheduler::Create(*session, so);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status().ToString();
  Running running(**scheduler);
  std::vector<std::shared_ptr<Request>> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    RequestSpec spec;
    spec.prompt = ids[i];
    spec.max_new_tokens = lengths[i];
    spec.stop_strings = stops[i];
    spec.sampling.temperature = 0;
    auto r = (*scheduler)->Submit(std::move(spec));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    requests.push_back(*r);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const Outcome got = Collect(*requests[i]);
    const RequestResult res = requests[i]->result();
    ASSERT_TRUE(res.status.ok()) << res.status.ToString();
    EXPECT_EQ(got.text, alone[i].text) << "request " << i;
    std::vector<int32_t> want = alone[i].ids;
    if (!want.empty() && want.back() == tok.eos_id()) want.pop_back();
    EXPECT_EQ(got.ids, want) << "request " << i;
    EXPECT_EQ(got.reason, alone[i].reason == "length" ? "length" : "stop") << "request " << i;
    EXPECT_EQ(res.stats.prompt_tokens, ids[i].size());
    EXPECT_GT(res.passes, 0u);
  }
  const SchedulerSnapshot snap = (*scheduler)->Snapshot();
  EXPECT_EQ(snap.finished, prompts.size());
  EXPECT_EQ(snap.active, 0u);
  // Decode steps carried several sequences: fewer passes than sequence steps.
  EXPECT_GT(snap.step_sequences, snap.steps);
}

TEST(SchedulerTest, CancelAndDeadlineFreeTheSlot) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  auto session = OpenModel(gguf, 1, 32);
  ASSERT_NE(session, nullptr);
  auto scheduler = Scheduler::Create(*session, SchedulerOptions{1, 4});
  ASSERT_TRUE(scheduler.ok());
  Running running(**scheduler);
  const std::vector<int32_t> prompt = session->tokenizer().Encode("Once upon a time", true);
  RequestSpec spec;
  spec.prompt = prompt;
  spec.max_new_tokens = 200;
  spec.sampling.temperature = 0;
  auto first = (*scheduler)->Submit(spec);
  ASSERT_TRUE(first.ok());
  WaitStarted(**first);
  (*first)->Cancel();
  WaitDone(**first);
  EXPECT_EQ((*first)->result().finish_reason, "cancelled");
  EXPECT_LT((*first)->result().stats.generated_tokens, 200u);

  RequestSpec late = spec;
  late.deadline_ns = storage::NowNs();  // already past
  auto timed = (*scheduler)->Submit(late);
  ASSERT_TRUE(timed.ok());
  WaitDone(**timed);
  EXPECT_EQ((*timed)->result().finish_reason, "timeout");

  // The one slot is free again: a request runs to its end.
  spec.max_new_tokens = 5;
  auto next = (*scheduler)->Submit(spec);
  ASSERT_TRUE(next.ok());
  const Outcome done = Collect(**next);
  EXPECT_EQ(done.reason, "length");
  EXPECT_EQ(done.ids.size(), 5u);
  const SchedulerSnapshot snap = (*scheduler)->Snapshot();
  EXPECT_EQ(snap.cancelled, 1u);
  EXPECT_EQ(snap.timed_out, 1u);
  EXPECT_EQ(snap.finished, 1u);
}

TEST(SchedulerTest, FullQueueAndBadRequestsAreRefused) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  auto session = OpenModel(gguf, 1, 32);
  ASSERT_NE(session, nullptr);
  auto scheduler = Scheduler::Create(*session, SchedulerOptions{1, 1});
  ASSERT_TRUE(scheduler.ok());
  Running loop(**scheduler);
  EXPECT_FALSE(Scheduler::Create(*session, SchedulerOptions{2, 1}).ok());  // 1 sequence only
  RequestSpec spec;
  spec.prompt = session->tokenizer().Encode("Once upon a time", true);
  spec.max_new_tokens = 250;
  spec.sampling.temperature = 0;
  auto running = (*scheduler)->Submit(spec);
  ASSERT_TRUE(running.ok());
  WaitStarted(**running);
  auto queued = (*scheduler)->Submit(spec);  // waits for the slot
  ASSERT_TRUE(queued.ok());
  auto refused = (*scheduler)->Submit(spec);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  (*running)->Cancel();
  (*queued)->Cancel();

  RequestSpec empty;
  EXPECT_EQ((*scheduler)->Submit(empty).status().code(), StatusCode::kInvalidArgument);
  RequestSpec too_long;
  too_long.prompt.assign(256, 1);
  EXPECT_EQ((*scheduler)->Submit(too_long).status().code(), StatusCode::kInvalidArgument);
  RequestSpec bad_sampling = spec;
  bad_sampling.sampling.top_p = 2;
  EXPECT_EQ((*scheduler)->Submit(bad_sampling).status().code(), StatusCode::kInvalidArgument);
  WaitDone(**queued);
}

TEST(SchedulerTest, WaitingRequestsLeaveTheQueueWhenCancelledOrLate) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  auto session = OpenModel(gguf, 1, 32);
  ASSERT_NE(session, nullptr);
  auto scheduler = Scheduler::Create(*session, SchedulerOptions{1, 4});
  ASSERT_TRUE(scheduler.ok());
  Running loop(**scheduler);
  RequestSpec spec;
  spec.prompt = session->tokenizer().Encode("Once upon a time", true);
  spec.max_new_tokens = 250;
  spec.sampling.temperature = 0;
  auto running = (*scheduler)->Submit(spec);
  ASSERT_TRUE(running.ok());
  WaitStarted(**running);
  auto gone = (*scheduler)->Submit(spec);
  RequestSpec late_spec = spec;
  late_spec.deadline_ns = storage::NowNs();
  auto late = (*scheduler)->Submit(late_spec);
  ASSERT_TRUE(gone.ok() && late.ok());
  (*gone)->Cancel();
  // Both end while the one slot is still busy with the first request.
  WaitDone(**gone);
  WaitDone(**late);
  EXPECT_EQ((*gone)->result().finish_reason, "cancelled");
  EXPECT_EQ((*late)->result().finish_reason, "timeout");
  EXPECT_EQ((*gone)->result().stats.generated_tokens, 0u);
  EXPECT_EQ((*scheduler)->Snapshot().queued, 0u);
  // They left from the queue: only the first was ever admitted (the first has ~250 decode steps
  // to go while the test cancels right after submitting).
  EXPECT_EQ((*scheduler)->Snapshot().admitted, 1u);
  (*running)->Cancel();
  WaitDone(**running);
  EXPECT_EQ((*running)->result().finish_reason, "cancelled");
}

}  // namespace
}  // namespace flashlm::engine
