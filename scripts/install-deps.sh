#!/usr/bin/env bash
# Installs the Debian packages mla's build, tests and benchmarks need, only those missing.
#   scripts/install-deps.sh [extra-package ...]
set -euo pipefail
pkgs=(g++ cmake make libeigen3-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev
      libopenmpi-dev openmpi-bin "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
