# Issue 18, call 2: the within tree in one process at 384/256 (correctness, every hit graph, times); a lone text
# prompt's client TTFT, 6aee87a against HEAD, the daemon run from its own tree; the daemon comparison again, the
# other order.
source .gpu/setup.sh
source .gpu/steps.sh
echo "start $(date +%T)"
(cd $W && PYTHONPATH=/tmp/site:$W:$W/clients/python/src timeout 200 python3 bench/prefix_cache_check.py --out $OUT/pc-within-384 \
  --prompt-tokens 384 --cached-tokens 256 --prompts 4 --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc-within-384.log 2>&1)
echo "pc-within-384 rc=$? $(date +%T)"
grep -i Traceback -A14 $OUT/pc-within-384.log | head -30
sed -n '/## Against/,/## Greedy/p' $OUT/pc-within-384/prefix-cache-check.md | head -30
lone $PWD/.t6aee before-6aee87a 50071
lone $PWD head 50072
hits within 2; hits head 2
tar -czf $OUT/dirs.tgz -C $OUT $(cd $OUT && ls -d */) 2>/dev/null
echo "end $(date +%T)"
