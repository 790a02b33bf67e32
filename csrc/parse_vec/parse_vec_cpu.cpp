#include "parse_vec/parse_vec.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <sstream>
#include <system_error>

namespace pyzsl {

namespace {

inline bool is_sep(char c) { return c == ' ' || c == '\t'; }

// Length of the UTF-8 character at [p, e), or 0 if the bytes there are not one as Python's
// decoder sees it: no overlong forms, no surrogates (U+D800..DFFF), nothing above U+10FFFF.
int utf8_len(const unsigned char* p, const unsigned char* e) {
  const unsigned c = p[0];
  if (c < 0x80) return 1;
  int n;
  unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;        // overlong
    else if (c == 0xED) hi = 0x9F;   // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;        // overlong
    else if (c == 0xF4) hi = 0x8F;   // above U+10FFFF
  } else {
    return 0;
  }
  if (e - p < n || p[1] < lo || p[1] > hi) return 0;
  for (int i = 2; i < n; ++i)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return n;
}

// Whether [b, e) is valid UTF-8; at the first bad byte, its offset goes to `at`.
bool valid_utf8(const char* b, const char* e, int64_t& at) {
  const auto* p = reinterpret_cast<const unsigned char*>(b);
  const auto* end = reinterpret_cast<const unsigned char*>(e);
  while (p < end) {
    const int n = utf8_len(p, end);
    if (n == 0) {
      at = p - reinterpret_cast<const unsigned char*>(b);
      return false;
    }
    p += n;
  }
  return true;
}

// The first ~24 bytes of a token, for messages (the rest of a bad line can be huge), cut at
// a character boundary, with bytes that are not UTF-8 written as \xNN: the message reaches
// Python as str, and a half character would turn the error into a UnicodeDecodeError.
std::string excerpt(const char* b, const char* e) {
  const auto* p = reinterpret_cast<const unsigned char*>(b);
  const auto* end = reinterpret_cast<const unsigned char*>(e);
  std::string s;
  while (p < end && p - reinterpret_cast<const unsigned char*>(b) < 24) {
    if (const int n = utf8_len(p, end)) {
      s.append(reinterpret_cast<const char*>(p), n);
      p += n;
    } else {
      static const char hex[] = "0123456789abcdef";
      s += "\\x";
      s += hex[*p >> 4];
      s += hex[*p & 15];
      ++p;
    }
  }
  if (p < end) s += "...";
  return s;
}

// Whether a decimal token whose double parse is out of range is too large (not too small):
// its order of magnitude, exponent + position of the first non-zero digit, is >= 0.
bool magnitude_at_least_one(const char* t, const char* e) {
  if (t < e && (*t == '-' || *t == '+')) ++t;
  int64_t order = 0;
  bool seen_point = false, seen_digit = false;
  for (; t < e && (std::isdigit(static_cast<unsigned char>(*t)) || *t == '.'); ++t) {
    if (*t == '.') {
      seen_point = true;
    } else if (!seen_digit && *t == '0') {
      if (seen_point) --order;  // 0.000ddd: each zero after the point lowers the order
    } else if (!seen_digit) {
      seen_digit = true;
      if (seen_point) --order;
    } else if (!seen_point) {
      ++order;  // each further integer digit raises it
    }
  }
  if (t < e && (*t == 'e' || *t == 'E')) {
    ++t;
    const bool neg = t < e && *t == '-';
    if (t < e && (*t == '-' || *t == '+')) ++t;
    int64_t x = 0;
    for (; t < e && std::isdigit(static_cast<unsigned char>(*t)); ++t) x = std::min<int64_t>(x * 10 + (*t - '0'), 1 << 30);
    order += neg ? -x : x;
  }
  return order >= 0;
}

int64_t count_tokens(const char* q, const char* e) {
  int64_t n = 0;
  while (q < e) {
    while (q < e && is_sep(*q)) ++q;
    if (q == e) break;
    ++n;
    while (q < e && !is_sep(*q)) ++q;
  }
  return n;
}

constexpr double kPow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// Fast path for the common token "-1.2345e-05" (Clinger 1990): at most 19 significant
// digits m and a decimal exponent |q| <= 22 with m <= 2^53 make m * 10^q one correctly
// rounded double operation; rounding that double to float is then exact unless it sits
// exactly on a float rounding midpoint (low 29 bits == 1 << 28), which we hand back.
// Returns the token's end, or nullptr to defer to std::from_chars (libstdc++ 12's is
// correct but ~4x slower; it also produces the error for a malformed token).
inline const char* parse_fast(const char* s, const char* e, float& v) {
  const char* p = s;
  bool neg = false;
  if (p < e && (*p == '-' || *p == '+')) neg = *p++ == '-';
  // All digits go into m (leading zeros add nothing); more than 19 digits in all (e.g. a
  // long run of leading zeros) is left to from_chars, so m never overflows.
  uint64_t m = 0;
  const char* d0 = p;
  while (p < e && static_cast<unsigned>(*p - '0') < 10) m = m * 10 + static_cast<unsigned>(*p++ - '0');
  int digits = static_cast<int>(p - d0), q = 0;
  if (p < e && *p == '.') {
    const char* f0 = ++p;
    while (p < e && static_cast<unsigned>(*p - '0') < 10) m = m * 10 + static_cast<unsigned>(*p++ - '0');
    q = -static_cast<int>(p - f0);
    digits -= q;
  }
  if (digits == 0 || digits > 19) return nullptr;
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    bool eneg = false;
    if (p < e && (*p == '-' || *p == '+')) eneg = *p++ == '-';
    int x = 0;
    const char* x0 = p;
    while (p < e && static_cast<unsigned>(*p - '0') < 10 && p - x0 < 5) x = x * 10 + (*p++ - '0');
    if (p == x0) return nullptr;
    q += eneg ? -x : x;
  }
  if (p < e && !is_sep(*p)) return nullptr;
  if (m == 0) {
    v = neg ? -0.0f : 0.0f;
    return p;
  }
  if (m > (uint64_t(1) << 53) || q < -22 || q > 22) return nullptr;
  double d = static_cast<double>(m);
  d = q < 0 ? d / kPow10[-q] : d * kPow10[q];
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  if ((bits & 0x1FFFFFFFu) == 0x10000000u) return nullptr;
  v = static_cast<float>(neg ? -d : d);
  return p;
}

// Parses one value token [s, e) (e = end of line); on success stores it and returns the
// end of the token, else fills why and returns nullptr.
inline const char* parse_value(const char* s, const char* e, float& v, std::string& why) {
  if (const char* f = parse_fast(s, e, v)) return f;
  const char* t = s;
  if (*t == '+' && t + 1 < e && t[1] != '-') ++t;  // from_chars rejects a leading '+'
  auto res = std::from_chars(t, e, v);
  const char* p = res.ptr;
  if (res.ec == std::errc::invalid_argument || (p < e && !is_sep(*p))) {
    const char* te = s;
    while (te < e && !is_sep(*te)) ++te;
    why = "not a number: '" + excerpt(s, te) + "'";
    return nullptr;
  }
  if (res.ec == std::errc::result_out_of_range) {
    // Underflow (e.g. 1e-50) rounds as strtof does; overflow is an error. Out of double
    // range too (1e-400 or 1e400), from_chars leaves d as it was: the token says which.
    double d = 0;
    const bool in_double = std::from_chars(t, e, d).ec == std::errc{};
    if (in_double ? std::fabs(d) < 1.0 : !magnitude_at_least_one(t, e)) {
      v = static_cast<float>(d);
    } else {
      why = "value out of float32 range: '" + excerpt(s, p) + "'";
      return nullptr;
    }
  }
  if (!std::isfinite(v)) {
    why = "non-finite value '" + excerpt(s, p) + "'";
    return nullptr;
  }
  return p;
}

}  // namespace

int64_t count_lines(const char* text, int64_t size, int64_t offset, int64_t limit) {
  PYZSL_CHECK(offset >= 0 && offset <= size, "offset ", offset, " outside [0, ", size, "]");
  if (offset == size) return 0;
  if (limit < 0) {
    const int64_t n = std::count(text + offset, text + size, '\n');
    return n + (text[size - 1] != '\n' ? 1 : 0);
  }
  // Stop after `limit` lines: a small max_vocab never scans a multi-GB file to its end.
  int64_t n = 0;
  const char* p = text + offset;
  const char* const end = text + size;
  while (n < limit && p < end) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
    ++n;
    p = nl ? nl + 1 : end;
  }
  return n;
}

ParseVecResult parse_vec(const ParseVecArgs& a) {
  require_dtype(a.out, DType::Float32);
  require_shape(a.out, {-1, -1});
  require_contiguous(a.out);
  PYZSL_CHECK(a.out.device == Device::CPU, a.out.name, ": must be on the CPU");
  PYZSL_CHECK(a.offset >= 0 && a.offset <= a.size, "offset ", a.offset, " outside [0, ", a.size, "]");
  const int64_t cap = a.out.size(0), dim = a.out.size(1);
  PYZSL_CHECK(dim > 0, "dim must be positive, got ", dim);
  float* X = a.out.ptr<float>();

  ParseVecResult r;
  r.words.reserve(static_cast<size_t>(cap) * 10);
  const char* p = a.text + a.offset;
  const char* const end = a.text + a.size;
  int64_t line = a.first_line;
  std::string why;
  while (p < end && r.rows < cap) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
    const char* next = nl ? nl + 1 : end;
    const char* e = nl ? nl : end;
    while (e > p && (e[-1] == '\r' || is_sep(e[-1]))) --e;
    if (e == p) {  // blank line
      p = next;
      ++line;
      continue;
    }
    const char* w = p;
    while (w < e && !is_sep(*w)) ++w;
    why.clear();
    int64_t bad_at = 0;
    if (w == p) {
      why = "line starts with a separator (empty word)";
    } else if (!valid_utf8(p, w, bad_at)) {
      // checked here, in line order, so that the error names the first bad line
      why = "word is not valid UTF-8 (byte " + std::to_string(bad_at) + " of '" + excerpt(p, w) + "')";
    } else if (w == e) {
      why = "no values after the word '" + excerpt(p, w) + "' (expected " + std::to_string(dim) + ")";
    } else {
      float* row = X + r.rows * dim;
      int64_t n = 0;
      const char* q = w;
      for (;;) {
        while (q < e && is_sep(*q)) ++q;
        if (q == e) break;
        if (n == dim) {
          why = "expected " + std::to_string(dim) + " values after the word, found " +
                std::to_string(dim + count_tokens(q, e));
          break;
        }
        float v;
        const char* t = parse_value(q, e, v, why);
        if (!t) {
          why = "value " + std::to_string(n + 1) + " is " + why;
          break;
        }
        row[n++] = v;
        q = t;
      }
      if (why.empty() && n < dim)
        why = "expected " + std::to_string(dim) + " values after the word, found " + std::to_string(n);
    }
    if (!why.empty()) {
      std::string msg = a.source + ":" + std::to_string(line) + ": " + why;
      if (!a.skip_errors) throw std::invalid_argument(msg);
      if (r.skipped == 0) r.first_error = msg;
      ++r.skipped;
    } else {
      if (r.rows) r.words.push_back('\n');
      r.words.append(p, w);
      ++r.rows;
    }
    p = next;
    ++line;
  }
  r.next_offset = p - a.text;
  r.next_line = line;
  return r;
}

std::string format_vec(const FormatVecArgs& a) {
  require_dtype(a.values, DType::Float32);
  require_shape(a.values, {-1, -1});
  require_contiguous(a.values);
  PYZSL_CHECK(a.values.device == Device::CPU, a.values.name, ": must be on the CPU");
  const int64_t rows = a.values.size(0), dim = a.values.size(1);
  PYZSL_CHECK(0 <= a.row0 && a.row0 <= a.row1 && a.row1 <= rows, "rows [", a.row0, ", ", a.row1,
              ") outside [0, ", rows, "]");
  PYZSL_CHECK(a.precision >= 0 && a.precision <= 9, "precision must be in [0, 9], got ", a.precision);
  const float* X = a.values.ptr<float>();
  // Upper bound per value: separator + sign + 9 digits + '.' + "e-45" = 16 (shortest or %.9g).
  const size_t per_row = static_cast<size_t>(dim) * 16 + 1;
  std::string out;
  out.resize(static_cast<size_t>(a.words_size) + 1 + per_row * (a.row1 - a.row0));
  char* o = out.data();
  const char* wp = a.words;
  const char* const wend = a.words + a.words_size;
  for (int64_t i = a.row0; i < a.row1; ++i) {
    PYZSL_CHECK(wp <= wend, "fewer words than rows (", i - a.row0, " for ", a.row1 - a.row0, ")");
    const char* we = static_cast<const char*>(std::memchr(wp, '\n', wend - wp));
    if (!we) we = wend;
    PYZSL_CHECK(we > wp, "row ", i, ": empty word");
    std::memcpy(o, wp, we - wp);
    o += we - wp;
    wp = we + 1;
    const float* row = X + i * dim;
    for (int64_t j = 0; j < dim; ++j) {
      PYZSL_CHECK(std::isfinite(row[j]), "row ", i, " column ", j, ": non-finite value");
      *o++ = ' ';
      auto res = a.precision == 0
                     ? std::to_chars(o, o + 16, row[j])
                     : std::to_chars(o, o + 16, row[j], std::chars_format::general, a.precision);
      o = res.ptr;
    }
    *o++ = '\n';
  }
  out.resize(o - out.data());
  return out;
}

}  // namespace pyzsl
