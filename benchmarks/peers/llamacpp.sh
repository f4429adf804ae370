#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize from the llama-cpp-python source package
# (which vendors llama.cpp), cached outside the repo. Used by benchmarks/step_latency.py.
#
#   benchmarks/peers/llamacpp.sh            # -> $RNNQUANT_PEERS (default ~/.cache/rnnquant-peers)/llama.cpp
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PEERS=${RNNQUANT_PEERS:-$HOME/.cache/rnnquant-peers}
PIP=${PIP:-$(dirname "$0")/../../.venv/bin/pip}
SRC=$PEERS/llama_cpp_python-$VERSION
mkdir -p "$PEERS"
if [ ! -d "$SRC" ]; then
  "$PIP" download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$PEERS"
  tar -xzf "$PEERS/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS"
fi
LLAMA=$SRC/vendor/llama.cpp
rm -rf "$LLAMA/.git"  # a leftover gitlink file makes ninja re-run cmake forever
cmake -S "$LLAMA" -B "$LLAMA/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$LLAMA/build" --target llama-bench llama-quantize -j "$(nproc)"
ln -sfn "$LLAMA" "$PEERS/llama.cpp"
echo "built $PEERS/llama.cpp/build/bin/{llama-bench,llama-quantize}"
