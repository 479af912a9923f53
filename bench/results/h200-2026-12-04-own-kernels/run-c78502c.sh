# HEAD: engine check (base wheels only, as in earlier engine checks), then the kernel report with every peer
B="transformers tokenizers huggingface_hub structlog prometheus_client protobuf"
base=$(for n in $B; do ls .peers/${n}-*.whl; done)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $base || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers-site .peers/*.whl || exit
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/host.txt
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
start=$(date +%s)
PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python/src timeout 280 python3 bench/engine_check.py --out $OUT/r/engine-head --selection-budget 150 --cache-dir /tmp/cache-head > $OUT/r/engine-head.log 2>&1
echo "engine rc=$? in $(( $(date +%s) - start )) s"
grep -h "engine, auto\|^| 1 |\|^| 8 |\|^| 32 |\|decode step\|Layer kernels\|CUDA-graph decode\|position 2048" $OUT/r/engine-head/engine-check.md | cut -c1-200
cp /tmp/cache-head/decisions-*.json $OUT/r/engine-head/ 2>/dev/null
python3 - <<'PY'
import glob, json
for path in glob.glob("/tmp/cache-head/decisions-*.json"):
    d = json.load(open(path))["decisions"]
    print([(x["batch_tokens"], x["kernel"]) for x in d["decisions"]])
    for n in d.get("notes", []):
        if "tuned" in n or "compiled" in n or "wrong" in n or "budget" in n: print("  note:", n[:200])
    for x in d["decisions"]:
        for r in x.get("rejected", []): print("  rejected", x["batch_tokens"], r["kernel"], r["reason"][:150])
PY
start=$(date +%s)
PYTHONPATH=/tmp/peers-site:$PWD:$PWD/clients/python/src timeout 270 python3 bench/kernel_peers.py --out $OUT/r/peers --seed-gemlite-config h100 --selection-budget 300 --cache-dir /tmp/peers-cache > $OUT/r/peers.log 2>&1
echo "peers rc=$? in $(( $(date +%s) - start )) s"
python3 -c "
import json; r=json.load(open('$OUT/r/peers/kernel-peers.json'))
for n in r['selection']['notes']: print('  note:', n[:200])
" 2>&1 | head
sed -n '/^| tokens/,/^$/p' $OUT/r/peers/kernel-peers.md | head -14
cd $OUT && tar czf r.tgz r && rm -rf r
