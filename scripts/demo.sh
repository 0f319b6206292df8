#!/usr/bin/env bash
# The whole product in one go: train on the bundled digits, export + verify, serve, classify over gRPC and HTTP, stop.
# Called by `make demo` (which first creates .venv). Settings: DEMO_RUN, DEMO_REPO, DEMO_PORT, DEMO_HTTP_PORT,
# DEMO_METRICS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
RUN=${DEMO_RUN:-runs/digits}
REPO=${DEMO_REPO:-model_repository}
PORT=${DEMO_PORT:-8001}
HTTP_PORT=${DEMO_HTTP_PORT:-8000}
METRICS_PORT=${DEMO_METRICS_PORT:-8002}
SERVER_LOG=${RUN}/server.log

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 train: resnet20 on the scikit-learn digits (PNG folders under data/digits), fit_one_cycle, 5 epochs"
rm -rf "$RUN"
"$PY" -m training fit --data digits --arch resnet20 --epochs 5 --out "$RUN"
"$PY" - "$RUN" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print(f"valid_accuracy={m['valid_accuracy']:.4f}  train_seconds={m['train_seconds']:.1f}  lr_max={m['lr_max']:.3g}")
PYEOF

step "2/5 export: fold BatchNorm → ONNX → verify against PyTorch and the NumPy reference → $REPO/digits/"
VERSION_DIR=$("$PY" -m training export "$RUN" --repository "$REPO" --name digits | tail -n 1)
"$PY" - "$VERSION_DIR" <<'PYEOF'
import json, sys
v = json.load(open(f"{sys.argv[1]}/verification.json"))
for key in ("onnxruntime", "numpy"):
    c = v["comparisons"][f"pytorch_vs_{key}"]
    print(f"PyTorch vs {key:11s} max_abs_diff={c['max_abs_diff']:.2e}  top1_agreement={c['top1_agreement']:.4f}"
          f"  accuracy={c['accuracy']:.4f}  ({c['samples']} images, batch sizes {c['batch_sizes']})")
print(f"batchnorm_nodes={v.get('batchnorm_nodes')}  passed={v.get('passed')}  → {sys.argv[1]}")
PYEOF

step "3/5 serve: gRPC on :$PORT, HTTP on :$HTTP_PORT, metrics on :$METRICS_PORT (log: $SERVER_LOG)"
"$PY" -m serving serve --repository "$REPO" --models digits --port "$PORT" --http-port "$HTTP_PORT" \
    --metrics-port "$METRICS_PORT" \
    --log-format text >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if "$PY" -m serving health --server "localhost:$PORT" --model digits >/dev/null 2>&1; then break; fi
    if ! kill -0 $SERVER_PID 2>/dev/null; then echo "server exited; its log:"; cat "$SERVER_LOG"; exit 1; fi
    sleep 0.2
done
"$PY" -m serving health --server "localhost:$PORT" --model digits

step "4/5 classify: one validation PNG per digit over gRPC, then one over HTTP (the curl command)"
SAMPLES=()
for d in 0 1 2 3 4 5 6 7 8 9; do
    SAMPLES+=("$(ls data/digits/valid/$d/*.png | head -n 1)")
done
"$PY" -m serving classify --server "localhost:$PORT" --model digits --top-k 3 "${SAMPLES[@]}"
echo "\$ curl -sS -F image=@${SAMPLES[7]} 'localhost:$HTTP_PORT/v1/models/digits/classify?top_k=3'"
"$PY" - "${SAMPLES[7]}" "http://localhost:$HTTP_PORT/v1/models/digits/classify?top_k=3" <<'PYEOF'
# What the curl command above does (curl may be missing on a fresh machine): one multipart upload, JSON back.
import json, sys, urllib.request, uuid
path, url = sys.argv[1:]
boundary = uuid.uuid4().hex
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.rsplit('/', 1)[-1]}\"\r\n"
        f"Content-Type: image/png\r\n\r\n").encode() + open(path, "rb").read() + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=30))))
PYEOF

step "5/5 stop: SIGTERM → drain → exit"
kill -TERM $SERVER_PID
wait $SERVER_PID && echo "server stopped cleanly"
trap - EXIT
