#!/usr/bin/env bash
# Installs what building Leasehold needs on a fresh Debian machine: a C/C++
# toolchain with libclang (RocksDB's bindings) and protoc (the gRPC contract).
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v c++ >/dev/null || need+=(g++)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || {
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
}
