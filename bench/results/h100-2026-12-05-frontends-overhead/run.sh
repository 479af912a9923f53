# Next device session, one call (~9 min): (1) the lone-hit graphs' argmax margin (prefix_cache_check now records
# near_tie / argmax_shortfall) at 384/256 and at 512/384, where the (128, 512) graph's argmax differed; (2) the
# 256-stream streaming overhead with 2 and then 4 frontends, 16 client processes, 4 timed rounds each.
source .gpu/setup.sh
echo "start $(date +%T)"
for pc in "384 256" "512 384"; do set -- $pc
  timeout 200 python3 bench/prefix_cache_check.py --out $OUT/pc-$1-$2 --prompt-tokens $1 --cached-tokens $2 --prompts 4 \
    --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc-$1-$2.log 2>&1
  echo "pc $1/$2 rc=$? $(date +%T)"; grep -i Traceback -A14 $OUT/pc-$1-$2.log | head -20
  grep -i "near-tie\|argmax\|FAIL" $OUT/pc-$1-$2/prefix-cache-check.md | head -20
done
timeout 330 python3 bench/concurrency_check.py --code-root $PWD --work /tmp/w --out $OUT/fe --levels 1,256,256,256,256 --hold 0 \
  --client-processes 16 --variant f2="--frontend-processes 2" --variant f4="--frontend-processes 4" -- --selection-budget 30 > $OUT/fe.log 2>&1
echo "frontends rc=$? $(date +%T)"; cat $OUT/fe/compare.md | cut -c1-300
tar -czf $OUT/dirs.tgz -C $OUT $(cd $OUT && ls -d */) 2>/dev/null
echo "end $(date +%T)"
