# HEAD (115fff5): engine check with a 150 s selection budget, then check-kernels with the same budget on a cold cache
source .gpu/setup.sh
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/host.txt
git rev-parse HEAD >> $OUT/host.txt 2>/dev/null
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
start=$(date +%s)
timeout 290 python3 bench/engine_check.py --out $OUT/r/engine-head --selection-budget 150 --cache-dir /tmp/cache-head > $OUT/r/engine-head.log 2>&1
echo "engine rc=$? in $(( $(date +%s) - start )) s"
grep -h "engine, auto\|^| 1 |\|^| 8 |\|^| 32 |\|decode step\|Layer kernels\|CUDA-graph decode\|position 2048" $OUT/r/engine-head/engine-check.md | cut -c1-200
cp /tmp/cache-head/decisions-*.json $OUT/r/engine-head/ 2>/dev/null
python3 - <<'PY'
import glob, json
for path in glob.glob("/tmp/cache-head/decisions-*.json"):
    d = json.load(open(path))["decisions"]
    print([(x["batch_tokens"], x["kernel"]) for x in d["decisions"]])
    for n in d.get("notes", []):
        if "tuned" in n or "compiled" in n or "wrong" in n or "budget" in n: print("  note:", n[:300])
    for x in d["decisions"]:
        for r in x.get("rejected", []): print("  rejected", x["batch_tokens"], r["kernel"], r["reason"][:150])
PY
start=$(date +%s)
timeout 240 python3 -c "from awqd.cli import main; main()" check-kernels --arch llama-2-7b --budget 150 --json --cache-dir /tmp/cache-ck > $OUT/r/check-kernels.json 2> $OUT/r/check-kernels.log
echo "check-kernels rc=$? in $(( $(date +%s) - start )) s"
python3 - $OUT/r/check-kernels.json <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("no json", e); sys.exit()
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "notes": [print("  note:", n[:300]) for n in v if "tuned" in n or "compiled" in n or "wrong" in n]
            else: walk(v)
    elif isinstance(o, list):
        for v in o: walk(v)
walk(d)
PY
tail -5 $OUT/r/check-kernels.log
cd $OUT && tar czf r.tgz r && rm -rf r
