// Text embedding files (fastText / word2vec ".vec"): a fast parser and formatter.
//
// The caller maps or reads the whole file into memory and hands us the bytes; we
// walk it once, line by line, parsing floats with std::from_chars (no locale, no
// per-float allocation). The float matrix is allocated by the Python wrapper (an
// upper bound of rows from count_lines) and filled in place; the words come back
// as one '\n'-joined byte string, which Python decodes and splits in one call.
// Extra memory: the words (a few bytes per row), nothing per float.
#pragma once
#include <cstdint>
#include <string>

#include "common/array.h"

namespace pyzsl {

struct ParseVecArgs {
  const char* text = nullptr;  // the whole file, UTF-8, not necessarily NUL-terminated
  int64_t size = 0;            // bytes in text
  int64_t offset = 0;          // byte offset of the first data line to parse (after any header)
  int64_t first_line = 1;      // 1-based line number of the line at offset, for messages
  Array out;                   // rows_cap × dim, float32, CPU, contiguous: filled row by row
  bool skip_errors = false;    // true: skip malformed lines and count them; false: throw
  std::string source;          // file name, for messages ("fr.vec:17: ...")
};

struct ParseVecResult {
  std::string words;           // the rows' words, joined by '\n' (no trailing '\n')
  int64_t rows = 0;            // rows written to out (at most rows_cap)
  int64_t skipped = 0;         // malformed lines skipped (skip_errors only)
  int64_t next_offset = 0;     // where parsing stopped: size when the text is exhausted
  int64_t next_line = 0;       // line number at next_offset
  std::string first_error;     // message of the first skipped line, empty if none
};

// Parses data lines "word v_1 ... v_dim" (separators: runs of ' ' or '\t'; '\r\n' line
// ends accepted; blank lines ignored) until rows_cap rows are written or the text ends.
// A malformed line (a word that is not valid UTF-8, no values, a count other than dim, a
// non-numeric value, NaN/inf or a value outside float32's range) throws
// std::invalid_argument "source:line: what", or is skipped and counted when skip_errors is
// set: the rows' words always decode as UTF-8. Values below float32's smallest normal
// round as strtof would (to a denormal or zero).
ParseVecResult parse_vec(const ParseVecArgs& args);

// Number of lines in text[offset:] (a last line without '\n' counts), at most `limit`
// (-1: no limit): an upper bound of the data rows, for allocating out. Memory-bandwidth bound.
int64_t count_lines(const char* text, int64_t size, int64_t offset, int64_t limit = -1);

struct FormatVecArgs {
  Array values;                // rows × dim, float32, CPU, contiguous
  const char* words = nullptr; // the rows' words joined by '\n' (one per row, no '\n' inside)
  int64_t words_size = 0;
  int64_t row0 = 0, row1 = 0;  // the block of rows to format: [row0, row1)
  int precision = 0;           // significant digits (%.{p}g); 0: shortest exact round trip
};

// Formats rows [row0, row1) as "word v_1 ... v_dim\n" lines (the caller writes the header).
std::string format_vec(const FormatVecArgs& args);

}  // namespace pyzsl
