// Token ids as tokenizer.json states them: integers from 0 to kMaxTokenId, checked where they are read.
#pragma once

#include "moelab/lib/json_read.h"

#include <fmt/format.h>

#include <cstdint>

namespace moelab {

// Ids index embedding rows: the largest vocabularies hold about a million tokens. A larger id is a broken
// file, and would otherwise size the id -> token table.
inline constexpr std::int64_t kMaxTokenId = (1 << 24) - 1;

// The id `value`; `where()` gives its JsonValue, built only for an error (vocabulary loops are hot).
template <class Where>
std::int64_t checked_token_id(const nlohmann::json& value, Where&& where) {
  if (value.is_number_unsigned() && value.get<std::uint64_t>() <= static_cast<std::uint64_t>(kMaxTokenId)) return value.get<std::int64_t>();
  const std::int64_t id = where().template get<std::int64_t>();  // names the key when the value is no integer
  if (id < 0) throw where().error(fmt::format("negative token id {}", id));
  throw where().error(fmt::format("token id {} is beyond any vocabulary (at most {})", id, kMaxTokenId));
}

}  // namespace moelab
