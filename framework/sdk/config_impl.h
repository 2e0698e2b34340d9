// The storage behind moelab::Config, shared by the SDK library and the host that fills it.
#pragma once

#include "moelab/config.h"

#include <toml++/toml.h>

#include <map>
#include <string>

namespace moelab {

struct Config::Impl {
  std::string id;
  toml::table table;                         // validated values, defaults filled in, paths absolute
  std::map<std::string, std::string> where;  // key -> "file:line" or "default"
};

}  // namespace moelab
