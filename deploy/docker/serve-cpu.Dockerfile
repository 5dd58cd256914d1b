# syntax=docker/dockerfile:1
# DangerCLIP CPU serving image: the Kafka worker on onnxruntime. No torch, no training code.
#
#   docker build -f deploy/docker/serve-cpu.Dockerfile -t dangerclip/serve:0.1.0 .
#   docker build -f deploy/docker/serve-cpu.Dockerfile --build-arg MODEL_DIR=deploy/models/v3 -t ... .
#
# Build context: the repository root. The model is mounted at /models at run time, or baked in by putting
# model.onnx in the build arg MODEL_DIR (default deploy/models, which holds only its README). MODEL_DIR must
# lie under deploy/models/: the .dockerignore next to this file keeps everything else out of the context.
# Runs as uid 10001 with a read-only root filesystem: nothing is written outside /tmp.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build: a venv with .[serve]
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the serving half needs: the wheel holds dangerclip/ and service/, never training/ or pseudomask/.
# Pinned dependencies first (their layer survives code changes), then the project without resolving again.
COPY deploy/docker/requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install --no-cache-dir -r /tmp/requirements-serve.txt
COPY pyproject.toml README.md ./
COPY dangerclip/ dangerclip/
COPY service/ service/
COPY deploy/docker/check_image.py /tmp/check_image.py
# No torch, and kafka-python reads every codec producers use (gzip, snappy, lz4, zstd).
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && python /tmp/check_image.py \
    && python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG MODEL_DIR=deploy/models
LABEL org.opencontainers.image.title="dangerclip-serve" \
      org.opencontainers.image.description="DangerCLIP Kafka scoring worker (CPU, onnxruntime)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 dangerclip \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dangerclip
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/dangerclip-healthcheck
COPY --chown=10001:10001 ${MODEL_DIR}/ /models/
# The settings' defaults for a container: listen on all interfaces so probes and Prometheus reach the
# HTTP server, and look for the model where it is mounted or baked.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    DANGERCLIP_METRICS_HOST=0.0.0.0 \
    DANGERCLIP_METRICS_PORT=9108 \
    DANGERCLIP_MODEL_PATH=/models/model.onnx \
    DANGERCLIP_PROVIDERS=cpu
WORKDIR /tmp
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/dangerclip-healthcheck"]
ENTRYPOINT ["dangerclip"]
CMD ["serve"]
