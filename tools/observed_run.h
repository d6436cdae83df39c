// What `activations`, `calibrate` and `train-predictor` share: a text run densely through a model
// in windows with an FfnObserver attached (engine/transformer.h), for statistics kept beside it.
#ifndef FLASHLM_TOOLS_OBSERVED_RUN_H_
#define FLASHLM_TOOLS_OBSERVED_RUN_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/session.h"
#include "storage/status.h"

namespace flashlm::tools {

// --ctx: 0 when not given (the model's context, at most 512), else in [1, kContextMax].
// Errors: InvalidArgument.
Status CheckWindowFlag(int64_t ctx, bool ctx_set);

// For statistics that are kept with a store and need every neuron computed (calibrate,
// train-predictor): `path` must be a store and `options` (the session flags applied) must leave
// --sparsity at auto or dense; it is set to dense. `kept` says what the store keeps ("thresholds
// are"), `activity` what needs every neuron ("calibration"). Errors: InvalidArgument.
Status RequireDenseStore(const std::string& path, std::string_view kept, std::string_view activity,
                         engine::SessionOptions* options);

struct ObservedSession {
  std::unique_ptr<engine::Session> session;
  std::vector<int32_t> tokens;  // the text, BOS first
};

// Reads `text_path` (at most kTextBytesMax bytes, not empty), opens `path` with `options` set for
// an observed run (windows of `ctx` tokens or the model's context up to 512, 64 tokens per pass,
// the FFN observed), prints the residency plan to stderr when `budgeted`, and tokenizes the text.
// Errors: those of the file read (named --text), InvalidArgument (an empty text), Session::Open's.
Result<ObservedSession> OpenObservedSession(const std::string& path, const std::string& text_path,
                                            int64_t ctx, engine::SessionOptions options,
                                            bool budgeted);

// Runs `tokens` through `model` in windows of its context with `observer` attached (detached
// after, also on failure); returns the seconds it took. Errors: the forward pass's.
Result<double> RunObserved(engine::Transformer& model, engine::FfnObserver* observer,
                           std::span<const int32_t> tokens);

}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_OBSERVED_RUN_H_
