# HEAD (.gpu/head) against the working tree (activations in K order, weights packed in fragment order): the skinny
# kernel's sweep (scale-first space) and the GEMV, alternately, twice each, on one machine.
source .gpu/setup.sh
echo "start $(date +%T)"
B="2,8,16,32,64,128,256,512"
run() { # name tree batches
  (cd $2 && PYTHONPATH=/tmp/site:$2:$2/clients/python/src timeout 170 python3 bench/skinny_tune.py $OUT/$1 --space scale-first --batches $3 > $OUT/$1.log 2>&1); echo "$1 rc=$? $(date +%T)"
}
H=$PWD/.gpu/head; N=$PWD  # .gpu/head: git archive 187d31a awqd bench clients
run head1 $H 1,$B; run new1 $N 1,$B; run new2 $N 1,$B; run head2 $H 1,$B
for f in head1 new1 new2 head2; do echo "== $f"; grep -v "^{" $OUT/$f.log | grep -v "^$" | tail -14 | cut -c1-260; done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
for f in ("head1", "new1", "new2", "head2"):
    try: d = json.load(open(f"{out}/{f}/skinny-tune.json"))
    except Exception as e: print(f, e); continue
    bad = [(r["shape"], r["batch"], k) for r in d["per_shape"] for k in ("skinny", "gemv") if isinstance(r.get(k), dict) and r[k].get("correct") is False]
    bad += [(r["shape"], r["batch"], "sf") for r in d["per_shape"] if isinstance(r.get("skinny_scale_first"), dict) and not r["skinny_scale_first"]["correct"]]
    bad += [(r["shape"], r["batch"], "bf16") for r in d["per_shape"] if r.get("skinny_bf16_default_correct") is False]
    print(f, "wall", round(d["wall_s"]), "incorrect:", bad)
PY
tar -czf $OUT/dirs.tgz -C $OUT head1 new1 new2 head2
echo "end $(date +%T)"
