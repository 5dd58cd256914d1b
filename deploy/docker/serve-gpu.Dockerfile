# syntax=docker/dockerfile:1
# DangerCLIP GPU serving image: the Kafka worker on onnxruntime-gpu (CUDA, TensorRT when present).
# No torch, no training code.
#
#   docker build -f deploy/docker/serve-gpu.Dockerfile -t dangerclip/serve-gpu:0.1.0 .
#
# CUDA_IMAGE and ORT_GPU_VERSION must agree: onnxruntime-gpu names the CUDA and cuDNN majors each release
# is built for (its "CUDA execution provider requirements" table). Run with the NVIDIA container runtime
# (`docker run --gpus all`, or `nvidia.com/gpu` limits in Kubernetes).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- build: a venv with .[serve]
FROM ${CUDA_IMAGE} AS build
# Empty: the onnxruntime version pinned for the CPU image, so both images run the same runtime.
ARG ORT_GPU_VERSION=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The CPU image's pins, with onnxruntime-gpu in place of onnxruntime: both provide the `onnxruntime`
# module and must never sit side by side (whichever installed last would win the import).
COPY deploy/docker/requirements-serve.txt /tmp/requirements-serve.txt
RUN ort="${ORT_GPU_VERSION:-$(sed -n 's/^onnxruntime==//p' /tmp/requirements-serve.txt)}" \
    && sed '/^onnxruntime==/d' /tmp/requirements-serve.txt > /tmp/requirements-gpu.txt \
    && pip install --no-cache-dir -r /tmp/requirements-gpu.txt "onnxruntime-gpu==${ort}"
COPY pyproject.toml README.md ./
COPY dangerclip/ dangerclip/
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
    && python -m compileall -q /opt/venv/lib \
    && if pip list --format=freeze | grep -iE '^(torch|torchvision|open.clip)'; then \
         echo "torch leaked into the serving image" >&2; exit 1; fi

# ---------------------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE} AS runtime
ARG MODEL_DIR=deploy/models
LABEL org.opencontainers.image.title="dangerclip-serve-gpu" \
      org.opencontainers.image.description="DangerCLIP Kafka scoring worker (GPU, onnxruntime-gpu)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# The venv links to the system python3, so the runtime stage needs the same interpreter, without pip.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dangerclip \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dangerclip
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/dangerclip-healthcheck
COPY --chown=10001:10001 ${MODEL_DIR}/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    DANGERCLIP_METRICS_HOST=0.0.0.0 \
    DANGERCLIP_METRICS_PORT=9108 \
    DANGERCLIP_MODEL_PATH=/models/model.onnx \
    DANGERCLIP_PROVIDERS=auto \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/dangerclip-healthcheck"]
ENTRYPOINT ["dangerclip"]
CMD ["serve"]
