# Sourced by the GPU scripts (gpu_check.sh, bench.sh): a scratch directory, the daemon's PID for the exit trap,
# step logging into $OUT/steps.log, and waiting for the daemon's health service. Set OUT and TARGET first.
mkdir -p "$OUT"
WORK=$(mktemp -d)
AWQD=(python3 -m awqd)
AWQCTL=(python3 -m awqd_client.cli --target "$TARGET" --timeout 30)
DAEMON=0
export COLUMNS=200 PYTHONUNBUFFERED=1
trap 'kill $DAEMON 2> /dev/null; rm -rf "$WORK"' EXIT

log() { echo "$(date -u +%H:%M:%S) == $*" | tee -a "$OUT/steps.log"; }

wait_serving() {  # one process polls the health service, rather than a CLI start per poll
  python3 - "$TARGET" "$1" << 'PY'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.2)
sys.exit(1)
PY
}
