#include "tools/observed_run.h"

#include <chrono>
#include <cstdio>

#include "engine/activation_counter.h"
#include "layout/store_reader.h"
#include "storage/file.h"
#include "tools/cli_util.h"

namespace flashlm::tools {

Status CheckWindowFlag(int64_t ctx, bool ctx_set) {
  if ((ctx_set && ctx < 1) || ctx < 0 || ctx > engine::kContextMax) {
    return InvalidArgumentError("--ctx must be in [1, " + std::to_string(engine::kContextMax) +
                                "]");
  }
  return Status::Ok();
}

Status RequireDenseStore(const std::string& path, std::string_view kept, std::string_view activity,
                         engine::SessionOptions* options) {
  if (!layout::StoreReader::LooksLikeStore(path)) {
    return InvalidArgumentError(path + " is not a store: " + std::string(kept) +
                                " kept with a store (flashlm repack the model first)");
  }
  if (options->transformer.sparsity != engine::FfnSparsity::kAuto &&
      options->transformer.sparsity != engine::FfnSparsity::kDense) {
    return InvalidArgumentError(std::string(activity) +
                                " computes every neuron: leave --sparsity at auto or dense");
  }
  options->transformer.sparsity = engine::FfnSparsity::kDense;
  return Status::Ok();
}

Result<ObservedSession> OpenObservedSession(const std::string& path, const std::string& text_path,
                                            int64_t ctx, engine::SessionOptions options,
                                            bool budgeted) {
  Result<std::string> text = storage::ReadFileBounded(text_path, kTextBytesMax);
  if (!text.ok()) return text.status().WithContext("--text");
  if (text->empty()) return InvalidArgumentError("text " + text_path + " is empty");
  options.transformer.max_context = static_cast<uint32_t>(ctx);
  options.default_context_max = 512;
  options.transformer.max_batch = 64;
  options.transformer.observe_ffn = true;
  ObservedSession run;
  ASSIGN_OR_RETURN(run.session, engine::Session::Open(path, options));
  if (budgeted) std::fputs(run.session->Describe().c_str(), stderr);
  run.tokens = run.session->tokenizer().Encode(*text, true);
  return run;
}

Result<double> RunObserved(engine::Transformer& model, engine::FfnObserver* observer,
                           std::span<const int32_t> tokens) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(model.set_ffn_observer(observer));
  Status run = engine::ForwardInWindows(model, tokens, model.max_context());
  model.set_ffn_observer(nullptr).IgnoreError();
  RETURN_IF_ERROR(run);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace flashlm::tools
