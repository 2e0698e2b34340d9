#include "moelab/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

long long KVCache::length() const {
  if (capacity > 0) return filled.empty() ? 0 : *std::max_element(filled.begin(), filled.end());
  return mask.defined() ? mask.size(1) : 0;
}

void KVCache::drop_newest(std::int64_t count) {
  if (count <= 0 || !mask.defined()) return;
  if (capacity > 0) {
    for (std::int64_t n : filled)
      if (n < count) throw std::logic_error(fmt::format("KVCache::drop_newest({}): a row holds only {} positions", count, n));
    torch::Tensor slot = torch::arange(capacity, cursor.options()).unsqueeze(0);
    torch::Tensor newest = (slot >= (cursor - count).unsqueeze(1)) & (slot < cursor.unsqueeze(1));
    mask.masked_fill_(newest, 0);
    cursor.sub_(count);
    for (std::int64_t& n : filled) n -= count;
    return;
  }
  const std::int64_t keep = std::max<std::int64_t>(mask.size(1) - count, 0);
  for (auto* slots : {&first, &second})
    for (auto& t : *slots)
      if (t.defined()) t = t.narrow(2, 0, keep);
  mask = mask.narrow(1, 0, keep);
}

void KVCache::replace_row(std::int64_t row, const KVCache& from, std::int64_t from_row) {
  if (capacity <= 0 || !mask.defined() || !from.mask.defined())
    throw std::logic_error("KVCache::replace_row: needs a static cache and a source that both ran a forward");
  if (row < 0 || row >= mask.size(0) || from_row < 0 || from_row >= from.mask.size(0))
    throw std::logic_error(fmt::format("KVCache::replace_row: row {} of {} from row {} of {}", row, mask.size(0), from_row, from.mask.size(0)));
  const std::int64_t width = from.capacity > 0 ? from.filled.at(from_row) : from.mask.size(1);
  if (width > capacity)
    throw std::runtime_error(fmt::format("the KV cache holds {} positions ({}); the row put in it holds {}", capacity,
                                         capacity_key.empty() ? "KVCache::capacity" : capacity_key, width));
  for (auto [to_slots, from_slots] : {std::make_pair(&first, &from.first), std::make_pair(&second, &from.second)})
    for (std::size_t i = 0; i < to_slots->size() && i < from_slots->size(); ++i)
      if ((*to_slots)[i].defined() && (*from_slots)[i].defined())
        (*to_slots)[i][row].narrow(1, 0, width).copy_((*from_slots)[i][from_row].narrow(1, 0, width));
  mask[row].zero_();
  mask[row].narrow(0, 0, width).copy_(from.mask[from_row].narrow(0, 0, width));
  cursor[row].fill_(width);
  filled.at(row) = width;
}

void KVCache::clear_row(std::int64_t row) {
  if (capacity <= 0 || !mask.defined()) throw std::logic_error("KVCache::clear_row: needs a static cache that ran a forward");
  mask[row].zero_();
  cursor[row].fill_(0);
  filled.at(static_cast<std::size_t>(row)) = 0;
}

}  // namespace moelab
