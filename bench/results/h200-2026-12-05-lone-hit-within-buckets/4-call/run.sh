# Issue 18, call 4: the streaming overhead at 256 streams (P=128, N=128) on HEAD, with the client's streams dealt to
# 8 and then 16 processes (4 in call 3): how much of the end burst's delivery lag is the client's own.
source .gpu/setup.sh
echo "start $(date +%T)"
for procs in 8 16; do
  timeout 150 python3 bench/concurrency_check.py --code-root $PWD --work /tmp/w --out $OUT/overhead-256-p$procs --levels 1,256,256,256 \
    --hold 0 --client-processes $procs -- --selection-budget 30 > $OUT/overhead-256-p$procs.log 2>&1
  echo "procs $procs rc=$? $(date +%T)"
  grep "^| [0-9]" $OUT/overhead-256-p$procs/grpc-concurrency.md | cut -c1-400
  zcat -f $OUT/overhead-256-p$procs/daemon.log | grep -c Traceback
done
tar -czf $OUT/dirs.tgz -C $OUT $(cd $OUT && ls -d */) 2>/dev/null; rm -rf $OUT/overhead-256-p*/
echo "end $(date +%T)"
