# a lone 1024-token prompt past the graph buckets: its eager rest after an 896-token hit against its eager whole
# prompt, with the host's share and torch.profiler's tables; correctness at these lengths too
source .gpu/setup.sh
timeout 200 python3 bench/prefix_cache_check.py --out $OUT/pc --prompt-tokens 1024 --cached-tokens 896 --prompts 4 \
  --profile --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc.log 2>&1; echo "pc rc=$?"
cat $OUT/pc/prefix-cache-check.md; grep -i "Traceback" -A5 $OUT/pc.log | head -20
head -40 $OUT/pc/profile-alone-eager-rest.txt | cut -c1-200
