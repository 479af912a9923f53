# Issue 18, call 3: a lone text prompt's client TTFT again, HEAD then 6aee87a (the order of call 2 reversed); then
# 256-stream rounds (P=128, N=128) for the streaming overhead, on HEAD.
source .gpu/setup.sh
source .gpu/steps.sh
echo "start $(date +%T)"
lone $PWD head-3 50073
lone $PWD/.t6aee before-6aee87a-3 50074
timeout 200 python3 bench/concurrency_check.py --code-root $PWD --work /tmp/w --out $OUT/overhead-256 --levels 1,256,256,256,256 \
  --hold 0 -- --selection-budget 30 > $OUT/overhead-256.log 2>&1
echo "overhead rc=$? $(date +%T)"
grep "^| [0-9]" $OUT/overhead-256/grpc-concurrency.md | cut -c1-400
zcat -f $OUT/overhead-256/daemon.log | grep -c Traceback
tar -czf $OUT/dirs.tgz -C $OUT $(cd $OUT && ls -d */) 2>/dev/null; rm -rf $OUT/overhead-256
echo "end $(date +%T)"
