#!/usr/bin/env bash
# The language-model benchmarks on one CUDA GPU in bfloat16, as one prepared run (a few minutes on an H100/H200):
# perplexity against the transformers docs' loop, prompted generation against pipeline("text-generation"), and
# log-likelihood classification against one forward per (example, label); each prints its ratio, its output check
# and the share of nlpflow's wall time spent in the model's forward passes. Then the GPU tests.
#
#     bash benchmarks/gpu_language_models.sh [cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=".venv/bin/python"
[ -x "$python" ] || python=python

echo "== perplexity (long documents, vocabulary 50,257, stride = window / 2)"
"$python" -m benchmarks.perplexity --device "$device" --dtype bfloat16 --corpus long --documents 64 --vocab 50257 --rounds 3
echo "== perplexity (paragraphs)"
"$python" -m benchmarks.perplexity --device "$device" --dtype bfloat16 --corpus paragraphs --documents 1405 --vocab 50257 --rounds 3
echo "== prompted generation (heavy-tailed prompts)"
"$python" -m benchmarks.generation --device "$device" --dtype bfloat16 --prompts 256 --batch-size 32 --lengths heavy --words 10-300 --max-new-tokens 32 --rounds 3
echo "== log-likelihood classification, 4 labels"
"$python" -m benchmarks.loglikelihood --device "$device" --dtype bfloat16 --examples 256 --rounds 3
echo "== GPU tests"
"$python" -m pytest -q -m gpu
