# Issue 18, call 1: a lone prompt's rest replayed as a CUDA graph within the prefill buckets (.within = HEAD with
# 8e3e2f1's step.py change reverted) against HEAD (a lone hit there replays its whole prompt's graph), in one process
# (correctness, every hit graph captured and replayed, times) and through the daemon; then a lone text prompt's
# client TTFT, 6aee87a (tokenized on the loop) against HEAD (tokenized on a worker thread).
source .gpu/setup.sh
source .gpu/steps.sh  # 1-call/steps.sh as it ran here
echo "start $(date +%T)"
PYTHONPATH=/tmp/site:$W:$W/clients/python/src timeout 200 python3 $W/bench/prefix_cache_check.py --out $OUT/pc-within-384 \
  --prompt-tokens 384 --cached-tokens 256 --prompts 4 --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc-within-384.log 2>&1
echo "pc-within-384 rc=$? $(date +%T)"
grep -i Traceback -A14 $OUT/pc-within-384.log | head -30
sed -n '/## Against/,/## Greedy/p' $OUT/pc-within-384/prefix-cache-check.md | head -30
hits head 1; hits within 1
lone $PWD/.t6aee before-6aee87a 50071
lone $PWD head 50072
echo "end $(date +%T)"
