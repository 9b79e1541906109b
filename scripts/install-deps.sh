#!/usr/bin/env bash
# Installs the Debian packages ecopt's build, tests and demo need, if any are
# missing. Idempotent: when everything is installed it only checks, and never
# touches apt. Used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail

packages=(
  g++ cmake ninja-build
  libeigen3-dev libboost-dev zlib1g-dev libssl-dev
  doctest-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  dataset-fashion-mnist liblinear-tools
  gnuplot-nox
  clang libclang-rt-14-dev
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
