# Three images from one file (docs/deployment.md):
#
#   make images                     # serve and train, on hosts with or without Docker Hub (deploy/images.py)
#   docker build --target serve -t resnet-serving:serve .       # onnxruntime + grpcio only: serves /model_repository
#   docker build --target train -t resnet-serving:train .       # torch + fastai: trains, exports into /model_repository
#   docker build --target serve-gpu -t resnet-serving:serve-gpu .   # onnxruntime-gpu with its CUDA libraries
#
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend handles every instruction here, so a build pulls
# nothing but the base (PYTHON_IMAGE). Where Docker Hub cannot be reached, `make images` builds an equivalent base
# from Debian packages (deploy/images/debian-base.sh) and passes it as PYTHON_IMAGE.
#
# Every image installs dependency sets of pyproject.toml ([train], [serve]) pinned by requirements/constraints.txt,
# the same lock as `make venv`, so an image runs what the tests ran. All run as the same non-root user (uid 10001): the
# trainer writes the model repository, the server reads it, and the named volume keeps its owner.
#
# A network that re-signs TLS needs its CA bundle for pip: pass it as the BuildKit secret `pip-ca`
# (`docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt …`; make images: PIP_CA=FILE). It is
# mounted only while pip runs and never stored in a layer.
#
# tests/deploy builds and runs these images when a Docker engine is reachable, and without one runs the serve
# target's CMD and HEALTHCHECK, read from here, in a venv with only the [serve] set.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- base: interpreter, the non-root user, quiet Python ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

# ---- serve-deps: the serve venv ------------------------------------------------------------------------------------
# Only pyproject.toml and the lock are copied, so these layers are rebuilt when dependencies change, not when code
# or docs do (pyproject's readme, README.md, is an empty stand-in here). The project itself installs as an empty
# wheel (no package folders here): it resolves the extra and leaves the project's version in the venv's metadata
# (the server reports it); the code is copied into /app by the final stages. The serve venv also drops pip and
# setuptools: nothing installs at run time.
FROM base AS serve-deps
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && touch README.md \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt ".[serve]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# ---- train: runs `python -m training fit`, then `export` into /model_repository (deploy/train.sh) ------------------
# torch 2.14.1 and torchvision 0.29.1 come from PyPI, whose Linux x86_64 wheels are the CUDA build: with the nvidia-*
# wheels the lock pins, this venv is about 6 GB. It trains on CPU as well, and on a GPU when the container gets one
# (`docker run --gpus all`). The CPU-only wheels would be far smaller, but they live on a separate package index,
# and these builds use PyPI only. The venv is installed in this stage itself (no deps stage to copy it from): a
# copy would write those 6 GB twice.
FROM base AS train
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && touch README.md \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt ".[train]" \
    && /opt/venv/bin/pip check
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
    ORT_DISABLE_TELEMETRY=1 \
    MODEL_NAME=digits \
    TRAIN_DATA=digits \
    TRAIN_ARCH=resnet20 \
    TRAIN_EPOCHS=5 \
    TRAIN_ARGS="" \
    TRAIN_THREADS="" \
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
# The mount point belongs to the user as in the train image: Docker fills a new named volume from whichever container
# mounts it first, and `docker compose up` creates the servers before the trainer runs. A root-owned mount point
# here made the shared volume root's, and the trainer failed with "Permission denied: '/model_repository/digits'".
RUN /opt/venv/bin/python -m compileall -q serving \
    && mkdir -p /model_repository \
    && chown app:app /model_repository
# SERVING_GRACE_S is the seconds in-flight requests get after SIGTERM. Docker's default stop timeout is also 10 s and
# does not include shutting the batchers down, so whoever stops the container gives it more: docker-compose.yml sets
# stop_grace_period: 15s, deploy/kubernetes terminationGracePeriodSeconds: 20 (with a 5 s preStop pause); use
# `docker stop -t 15` by hand. The ports stay 8000 (HTTP), 8001 (gRPC) and 8002 (metrics): map them on the host.
# ORT_DISABLE_TELEMETRY: onnxruntime would otherwise keep a usage database under $HOME, which is read-only here (it
# logs a warning at every start) and has no business in a server.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONPATH=/app \
    SERVING_REPOSITORY=/model_repository \
    SERVING_HOST=0.0.0.0 \
    SERVING_GRACE_S=10 \
    SERVING_LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
USER 10001:10001
VOLUME ["/model_repository"]
EXPOSE 8000 8001 8002
STOPSIGNAL SIGTERM
# grpc.health.v1 on the overall service: SERVING once every model passed its golden self-check (start-up with the
# digits model takes well under the start period).
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "serving", "health", "--server", "localhost:8001"]
CMD ["python", "-m", "serving", "serve"]

# ---- serve-gpu: the serve image with onnxruntime-gpu and the CUDA libraries it loads ------------------------------
# The same venv with onnxruntime swapped for onnxruntime-gpu, whose [cuda,cudnn] extras bring the CUDA 13 runtime,
# cuBLAS, cuFFT, cuRAND and cuDNN as the nvidia-* wheels the lock pins (the driver comes from the host:
# `docker run --gpus all`). With no GPU visible the server logs that CUDA is unavailable and serves on the CPU.
FROM serve-deps AS serve-gpu-deps
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/venv/bin/python -m ensurepip \
    && /opt/venv/bin/python -m pip uninstall --yes onnxruntime \
    && /opt/venv/bin/python -m pip install -c requirements/constraints.txt "onnxruntime-gpu[cuda,cudnn]" \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# Everything else (user, code, ENV, HEALTHCHECK, CMD) is the serve image's. The CPU venv is removed first so that no
# file of the CPU onnxruntime shadows the GPU build; it stays in the serve layer below (about 0.3 GB of ~3 GB).
FROM serve AS serve-gpu
USER root
RUN rm -rf /opt/venv
COPY --from=serve-gpu-deps /opt/venv /opt/venv
# onnxruntime's CUDA provider dlopens cuBLAS, cuDNN … by name: the nvidia-* wheels keep them in site-packages, out of
# the loader's search path (without this: "libcublasLt.so.13: cannot open shared object file", GPU or not).
ARG NVIDIA_LIBS=/opt/venv/lib/python3.11/site-packages/nvidia
ENV SERVING_DEVICE=cuda \
    LD_LIBRARY_PATH=${NVIDIA_LIBS}/cu13/lib:${NVIDIA_LIBS}/cudnn/lib
USER 10001:10001

# ---- balancer, prometheus: the other services of docker-compose.yml, from Debian packages ---------------------------
# Their usual images (envoyproxy/envoy, prom/prometheus) come from Docker Hub, which not every site can reach, and
# Envoy has no Debian package. Bookworm packages HAProxy 2.6 (an HTTP/2-aware L7 balancer: one gRPC call at a time,
# DNS discovery of replicas, health checks, retries) and Prometheus 2.42, so both build on this file's base wherever
# the project's own images build. Their configuration is bind-mounted by compose (deploy/haproxy.cfg,
# deploy/prometheus.yml). The packages are not pinned to a version: Debian replaces a version in the archive with its
# security update, and a pinned one would stop installing.
FROM base AS balancer
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
USER haproxy
EXPOSE 9001 8404
# SIGUSR1: HAProxy's soft stop (stop listening, finish the calls in flight, then exit).
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

FROM base AS prometheus
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus
USER prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=:9090"]
