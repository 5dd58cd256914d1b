# syntax=docker/dockerfile:1
# DangerCLIP GPU serving image: the Kafka worker on onnxruntime-gpu (CUDA, TensorRT when present).
# No torch, no training code.
#
#   docker build -f deploy/docker/serve-gpu.Dockerfile -t dangerclip/serve-gpu:0.1.0 .
#
# CUDA_IMAGE and ORT_GPU_VERSION are pinned together. onnxruntime-gpu on PyPI is built for CUDA 13 from 1.27
# (`readelf -d onnxruntime/capi/libonnxruntime_providers_cuda.so` of 1.31.1: libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10; its [cudnn] extra: cuDNN 9) and for CUDA 12 up to 1.26. It stops at
# 1.31.1 while the CPU image runs onnxruntime 1.32.0 (requirements-serve.txt), so the version is its own pin,
# not the CPU one. check_image.py fails the build when the CUDA provider cannot load here: a library `ldd`
# cannot find, a cuDNN/cuFFT/NVRTC that does not dlopen, or a CUDA major that is not the wheel's.
# Run with the NVIDIA container runtime (`docker run --gpus all`, or `nvidia.com/gpu` limits in Kubernetes),
# which mounts the driver (libcuda.so.1) from the host.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- build: a venv with .[serve]
FROM ${CUDA_IMAGE} AS build
ARG ORT_GPU_VERSION=1.31.1
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
RUN sed '/^onnxruntime==/d' /tmp/requirements-serve.txt > /tmp/requirements-gpu.txt \
    && pip install --no-cache-dir -r /tmp/requirements-gpu.txt "onnxruntime-gpu==${ORT_GPU_VERSION}"
COPY pyproject.toml README.md ./
COPY dangerclip/ dangerclip/
COPY service/ service/
COPY deploy/docker/check_image.py /tmp/check_image.py
# The build stage is the runtime stage's base image, so what loads here loads at run time.
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && python /tmp/check_image.py --gpu \
    && python -m compileall -q /opt/venv/lib

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
    DANGERCLIP_PROVIDERS=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/dangerclip-healthcheck"]
ENTRYPOINT ["dangerclip"]
CMD ["serve"]
