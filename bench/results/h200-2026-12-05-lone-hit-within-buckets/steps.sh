W=$PWD/.within
hits() {  # tree round: lone 384-token prompts sharing 256 ids through the daemon, one miss then hits
  tree=$1; round=$2; root=$PWD; [ $tree = within ] && root=$W
  timeout 140 python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/hit-$tree-$round --levels 1,1,1 --hold 0 \
    --prompt-tokens 384 --shared-prefix-tokens 256 --new-tokens 16 -- --selection-budget 30 > $OUT/hit-$tree-$round.log 2>&1
  echo "$tree-$round rc=$? $(date +%T)"
  zcat -f $OUT/hit-$tree-$round/daemon.log | grep -o '"prompt_tokens": 384.*"ttft_ms": [0-9.]*' | grep -o 'ttft_ms": [0-9.]*' | tr '\n' ' '; echo
  zcat -f $OUT/hit-$tree-$round/daemon.log | grep '"model_warmed_up"' | cut -c1-600
  zcat -f $OUT/hit-$tree-$round/daemon.log | grep -c Traceback; zcat -f $OUT/hit-$tree-$round/daemon.log | grep -i -B2 -A10 Traceback | head -20
  gzip $OUT/hit-$tree-$round/daemon.log; tail -2 $OUT/hit-$tree-$round.log
}
lone() {  # root name port: a lone short text prompt's client TTFT, and a 3.6 MB prompt beside a decoding stream
  root=$1; name=$2; port=$3
  [ -f /tmp/w/models/llama-2-7b/config.json ] || python3 -m awqd synth --arch llama-2-7b --out /tmp/w/models/llama-2-7b > /dev/null
  (cd $root && PYTHONPATH=/tmp/site:$root:$root/clients/python/src exec python3 -m awqd serve --listen 127.0.0.1:$port \
    --cache-dir /tmp/w/cache --model-root /tmp/w/models --model synth=llama-2-7b --selection-budget 30 --log-format json) \
    > $OUT/$name.daemon.log 2>&1 &
  pid=$!
  python3 -c "import asyncio,sys; sys.path.insert(0,'bench'); import grpc_concurrency as g; asyncio.run(g.wait_ready('127.0.0.1:$port', 150))"
  timeout 60 python3 bench/prompt_stall.py --target 127.0.0.1:$port --model synth --prompt-bytes 3600000 --rounds 1 \
    --new-tokens 1500 --lone-requests 300 > $OUT/$name.jsonl 2>&1
  echo "$name rc=$? $(date +%T)"; cut -c1-300 $OUT/$name.jsonl
  kill -TERM $pid; wait $pid; echo "daemon rc=$?"; grep -c Traceback $OUT/$name.daemon.log; gzip $OUT/$name.daemon.log
}
