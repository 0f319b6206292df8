"""The project's list of performance targets, measured by ``make bench`` (``python -m benchmarks``).

``TARGETS`` maps a key to the target's text; a benchmark row that answers a target names its key in
``Row.target`` and judges it against the threshold below, so the text and the check read the same number.
The report lists every target once: met, not met, or "not measured yet" when no row of the run judged it
(some targets have no benchmark yet; ``--quick`` runs only some families).
"""

from __future__ import annotations

# ---- thresholds, used by the benchmark families that judge them ------------------------------------------------

SERVER_VS_INPROC = 0.95     # server req/s ÷ in-process onnxruntime req/s, ResNet-18 224 px, concurrency 8
SHM_VS_INPROC = 0.97        # the same through system shared memory (input and output), gRPC
SERVER_P50_SLACK_MS = 0.5   # server p50 at concurrency 1 minus in-process batch-1 time
DIGITS_VS_ECHO = 0.7        # digits server req/s ÷ bare grpc.aio echo req/s, concurrency 8
JPEG_12MP = 1.3             # 12-MP JPEG latency ÷ ready-tensor latency, same model
HTTP_VS_GRPC = 0.8          # HTTP req/s ÷ gRPC req/s, same model and inputs
FASTAI_EPOCH = 1.5          # fastai epoch time ÷ bare PyTorch loop time, same model, batch size and steps
DIGITS_ACCURACY = 0.985     # validation accuracy on digits
INT8_SPEED = 1.8            # INT8 speed ÷ FP32 speed, ResNet-18
INT8_DROP_POINTS = 0.5      # FP32 top-1 minus INT8 top-1, percentage points
COLD_START_S = 1.5          # spawn to health SERVING, digits
MEMORY_MB = 150.0           # server VmRSS with one small model, after warm-up
BATCH_CLI = 0.8             # batch CLI (local) img/s ÷ in-process onnxruntime img/s, realistic JPEGs
LOOP_STEP_MS = 50           # the longest event-loop step one request of the largest size the limits allow may cause

TARGETS: dict[str, str] = {
    "server_vs_inproc": "server throughput with dynamic batching vs in-process onnxruntime, ResNet-18 224 px, "
                        f"FP32 tensors, concurrency 8: >= {SERVER_VS_INPROC:g}x",
    "server_shm_vs_inproc": "server throughput with input and output in system shared memory (gRPC) vs in-process "
                            f"onnxruntime, ResNet-18 224 px, concurrency 8: >= {SHM_VS_INPROC:g}x",
    "server_p50": "server p50 latency at concurrency 1 vs in-process onnxruntime batch 1, every model measured: "
                  f"at most +{SERVER_P50_SLACK_MS:g} ms",
    "digits_server": f"digits: server requests/s at concurrency 8 >= {DIGITS_VS_ECHO:g}x a bare grpc.aio echo "
                     "server measured in the same run with the same client and payload",
    "jpeg_12mp": f"a 12-MP JPEG through the server: latency <= {JPEG_12MP:g}x the same model fed a ready tensor",
    "http_vs_grpc": f"HTTP vs gRPC on the same model and inputs: >= {HTTP_VS_GRPC:g}x",
    "fastai_epoch": f"fastai epoch time <= {FASTAI_EPOCH:g}x a bare PyTorch loop over the same model, batch size "
                    "and steps",
    "digits_accuracy": f"digits: validation accuracy >= {DIGITS_ACCURACY:.1%} (the project's trainer, one-cycle)",
    "int8_speed": f"INT8 static quantization vs FP32 onnxruntime, ResNet-18 224 px: >= {INT8_SPEED:g}x faster",
    "int8_accuracy": f"INT8 vs FP32 top-1 accuracy drop: <= {INT8_DROP_POINTS:g} points (the trained digits model)",
    "cold_start": f"server ready (health SERVING) <= {COLD_START_S:g} s after start, digits model",
    "memory": f"server resident memory <= {MEMORY_MB:.0f} MB per small model (digits)",
    "batch_cli": f"batch CLI, local mode, realistic JPEGs: >= {BATCH_CLI:g}x in-process onnxruntime at the same "
                 "batch size",
    "ray_engine": "batch CLI's Ray engine vs the local engine: ratio reported (no threshold)",
    "loop_step": f"the largest request the default limits allow, of every kind on both transports, holds the event "
                 f"loop (every other client's turn) at most {LOOP_STEP_MS} ms at a time",
}
