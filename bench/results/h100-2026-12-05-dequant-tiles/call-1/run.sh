# Call 1 (H100 GPU-ec7a876b). The working tree: 0b0695a with dequant-registers.patch applied; main-tree: 0b0695a's
# awqd (git archive); .gpu/maxnreg: the gemv-maxnreg branch's awqd, bench, clients and tests (84762ba: 0b0695a with
# gemv-maxnreg.patch and the bench scripts' labels for capped tiles). bench/dequant_check.py was an earlier revision
# (eight tiles; the layer at 256 and 512 tokens, each linear on its fastest tile).
# carry: [".whl", "main-tree", ".gpu/maxnreg", ".gpu/c1.sh", ".gpu/setup.sh"]
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
dq() { root=$1; tag=$2
  PYTHONPATH=/tmp/site:$root:$PWD/clients/python/src timeout 200 python3 bench/dequant_check.py --out $OUT/r/$tag > $OUT/r/$tag.log 2>&1
  echo "$tag rc=$? at $(( $(date +%s) - t0 )) s"; tail -22 $OUT/r/$tag.log | grep -v "^$"; }
dq $PWD dequant-new
dq $PWD/main-tree dequant-main
gv() { root=$1; tag=$2
  PYTHONPATH=/tmp/site:$root:$PWD/clients/python/src timeout 150 python3 $root/bench/gemv_check.py --out $OUT/r/$tag > $OUT/r/$tag.log 2>&1
  echo "$tag rc=$? at $(( $(date +%s) - t0 )) s"; grep "tuned\|Correctness\|FAILED\|fp16 cuBLAS" $OUT/r/$tag/gemv-check.md | head -6; }
gv $PWD/.gpu/maxnreg gemv-branch; gv $PWD gemv-main
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
