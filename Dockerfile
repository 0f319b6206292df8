# syntax=docker/dockerfile:1
#
# Two images from one file (README, "Containers"):
#
#   docker build --target train -t resnet-serving:train .   # torch + fastai: trains, exports into /model_repository
#   docker build --target serve -t resnet-serving:serve .   # onnxruntime + grpcio only: serves /model_repository
#
# Both install the dependency sets of pyproject.toml ([train], [serve]) pinned by requirements/constraints.txt, the
# same lock as `make venv`, so an image runs what the tests ran. Both run as the same non-root user (uid 10001):
# the trainer writes the model repository, the server reads it, and the named volume keeps its owner.
#
# tests/deploy checks this file without a Docker engine: hadolint, and the serve target's CMD, ENV and HEALTHCHECK
# are read from here and run against a trained repository in a venv with only the [serve] set.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- base: interpreter, the non-root user, quiet Python ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

# ---- serve-deps, train-deps: one venv per dependency set -----------------------------------------------------------
# Only pyproject.toml, README.md and the lock are copied, so these layers are rebuilt when dependencies change, not
# when code does. The project itself installs as an empty wheel (no package folders here): it resolves the extra and
# leaves the project's version in the venv's metadata (the server reports it); the code is copied into /app by the
# final stages. The serve venv also drops pip and setuptools: nothing installs at run time.
FROM base AS serve-deps
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt ".[serve]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# torch 2.14.1 and torchvision 0.29.1 come from PyPI, whose Linux x86_64 wheels are the CUDA build: with the nvidia-*
# wheels the lock pins, this venv is several GB. It trains on CPU as well, and on a GPU when the container gets one
# (`docker run --gpus all`, or the compose GPU example in README). The CPU-only wheels would be far smaller, but they
# live on a separate package index, and these builds use PyPI only.
FROM base AS train-deps
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt ".[train]" \
    && /opt/venv/bin/pip check

# ---- train: runs `python -m training fit`, then `export` into /model_repository (deploy/train.sh) ------------------
FROM base AS train
COPY --from=train-deps /opt/venv /opt/venv
WORKDIR /app
COPY models/ models/
COPY training/ training/
COPY serving/ serving/
COPY --chmod=0755 deploy/train.sh deploy/train.sh
# The volume mount points exist and belong to the user, so a fresh named volume starts out writable by it.
RUN mkdir -p /model_repository /runs \
    && chown app:app /model_repository /runs
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONPATH=/app \
    HOME=/home/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    RESNET_DATA_HOME=/home/app/data \
    MODEL_REPOSITORY=/model_repository \
    RUNS_DIR=/runs \
    MODEL_NAME=digits \
    TRAIN_DATA=digits \
    TRAIN_ARCH=resnet20 \
    TRAIN_EPOCHS=5 \
    TRAIN_ARGS="" \
    EXPORT_ARGS="" \
    TRAIN_FORCE=0
USER 10001:10001
VOLUME ["/model_repository", "/runs"]
CMD ["/app/deploy/train.sh"]

# ---- serve: python slim + the serve venv + serving/ ----------------------------------------------------------------
# Only the serving package is copied: it imports neither training nor models, and tests/deploy proves it by running
# this CMD from a folder that holds nothing else. Every server option comes from a SERVING_* variable (serving/cli.py),
# so compose and Kubernetes configure the server without replacing the command.
FROM base AS serve
COPY --from=serve-deps /opt/venv /opt/venv
WORKDIR /app
COPY serving/ serving/
# Byte-compiled at build time: the root filesystem can be read-only and start-up does not compile.
RUN /opt/venv/bin/python -m compileall -q serving \
    && mkdir -p /model_repository
# SERVING_GRACE_S is the seconds in-flight requests get after SIGTERM. Docker's default stop timeout is also 10 s and
# does not include shutting the batchers down, so whoever stops the container gives it more: docker-compose.yml sets
# stop_grace_period: 15s, deploy/kubernetes terminationGracePeriodSeconds: 20 (with a 5 s preStop pause); use
# `docker stop -t 15` by hand. The ports stay 8001 (gRPC) and 8002 (metrics): map them on the host instead.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONPATH=/app \
    SERVING_REPOSITORY=/model_repository \
    SERVING_HOST=0.0.0.0 \
    SERVING_GRACE_S=10 \
    SERVING_LOG_FORMAT=json
USER 10001:10001
VOLUME ["/model_repository"]
EXPOSE 8001 8002
STOPSIGNAL SIGTERM
# grpc.health.v1 on the overall service: SERVING once every model passed its golden self-check (start-up with the
# digits model takes well under the start period).
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "serving", "health", "--server", "localhost:8001"]
CMD ["python", "-m", "serving", "serve"]
