// Always-on invariant checks. A failed CHECK is a bug in flashlm, never a reaction to bad input:
// bad input gets a Status. CHECK aborts with the file, line and condition; DCHECK is debug-only
// and for checks too expensive for release builds.
#ifndef FLASHLM_STORAGE_CHECK_H_
#define FLASHLM_STORAGE_CHECK_H_

namespace flashlm::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition);
}  // namespace flashlm::internal

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (__builtin_expect(!(cond), 0))                                               \
      ::flashlm::internal::CheckFailed(__FILE__, __LINE__, #cond);                  \
  } while (0)

#define CHECK_EQ(a, b) CHECK((a) == (b))
#define CHECK_NE(a, b) CHECK((a) != (b))
#define CHECK_LT(a, b) CHECK((a) < (b))
#define CHECK_LE(a, b) CHECK((a) <= (b))
#define CHECK_GT(a, b) CHECK((a) > (b))
#define CHECK_GE(a, b) CHECK((a) >= (b))
#define CHECK_OK(expr) CHECK((expr).ok())

#ifdef NDEBUG
#define DCHECK(cond) \
  do {               \
  } while (0)
#else
#define DCHECK(cond) CHECK(cond)
#endif

#endif  // FLASHLM_STORAGE_CHECK_H_
