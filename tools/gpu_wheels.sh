#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a bare GPU machine (PyTorch 2.11, transformers 5.17, accelerate,
# no network), downloaded here into .wheels/ to travel with the checkout (the device tool carries at most
# 64 MiB in all). bitsandbytes ships a library per CUDA version; only CUDA 13's is kept.
#
#     tools/gpu_wheels.sh [PYTHON_VERSION]        # the device's Python, default 3.11
#
# On the device (tunelab itself runs from the checkout; bench/gpu_check.py puts it on PYTHONPATH):
#     pip install -q --no-index --no-deps .wheels/*.whl && python bench/gpu_check.py --out $OUT/gpu_check.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.11}"
out=.wheels
rm -rf "$out" && mkdir -p "$out"
# tunelab's runtime beyond what the machine has (versions from requirements.lock), and the GPU extras. Left
# out: bpe-openai (41 MB; OpenAI token counts fall back to an estimate), scipy, sentence-transformers and
# the evaluation's text metrics (the check does not evaluate), and matplotlib with pillow and fonttools
# (22 MB; a run without them writes no loss-curve picture and says so in its events).
packages=(
  transformers==5.23.0 tokenizers==0.23.3 huggingface_hub==2.4.0 safetensors==0.8.0 peft==0.21.2
  pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
  fastapi==0.163.2 starlette==1.10.0 uvicorn==0.54.0 h11==0.16.0 python-multipart==0.0.34 anyio==4.16.0
  openai==3.51.0 httpx2==2.16.2 httpcore2==2.16.2 jiter==0.19.0 sniffio==1.3.1 distro
  typer==0.29.1 click==8.5.1 rich==15.0.0 shellingham==1.5.4 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0
  PyYAML==6.0.3 Jinja2==3.1.6 MarkupSafe==3.0.4 gguf==0.19.0 regex==2026.11.19 tqdm==4.70.1
  python-dateutil==4.0.0 six==1.17.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 truststore==0.10.5 requests==2.34.2 urllib3==2.8.0
  charset-normalizer==3.5.3 idna==3.20 certifi==2026.10.19.post1 opentelemetry-api==1.45.2 tzdata==2026.6
  liger-kernel==0.8.5 bitsandbytes==0.50.2
)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_31_x86_64 \
  --platform manylinux_2_34_x86_64 --platform any \
  --implementation cp -d "$out" "${packages[@]}" "$@" 2>&1 | grep -v "^WARNING: Location" || true
# bitsandbytes: keep the CUDA 13 library only (the machine's PyTorch is built for it).
for wheel in "$out"/bitsandbytes-*.whl; do
  [ -e "$wheel" ] || continue
  scratch=$(mktemp -d)
  python3 -m zipfile -e "$wheel" "$scratch"
  find "$scratch/bitsandbytes" -name 'libbitsandbytes_cuda*.so' ! -name 'libbitsandbytes_cuda13*' -delete
  find "$scratch/bitsandbytes" -name 'libbitsandbytes_rocm*.so' -delete
  rm "$wheel"
  (cd "$scratch" && python3 -m zipfile -c "$OLDPWD/$wheel" ./*)
  rm -rf "$scratch"
done
ls "$out" | wc -l | xargs echo "wheels:"
du -sh "$out"
