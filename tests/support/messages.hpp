#pragma once
// What the tests ask of error messages: the text an exception carries, and
// whether a text contains a part.
#include <string>

namespace ecopt::test {

/// The message of the Error that f throws ("" when it throws none).
template <class Error, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace ecopt::test
