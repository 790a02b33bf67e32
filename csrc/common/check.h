// One error macro for the whole extension. Errors are C++ exceptions, translated
// to Python at the binding boundary (std::invalid_argument -> ValueError).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace pyzsl {

template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw std::invalid_argument(os.str());
}

}  // namespace pyzsl

#define PYZSL_CHECK(cond, ...)            \
  do {                                    \
    if (!(cond)) ::pyzsl::fail(__VA_ARGS__); \
  } while (0)
