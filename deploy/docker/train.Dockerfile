# syntax=docker/dockerfile:1
# DangerCLIP training and pseudo-mask image: torch, open_clip, GroundingDINO and SAM (`.[pseudomask]`).
#
#   docker build -f deploy/docker/train.Dockerfile -t dangerclip/train:0.1.0 .
#   docker run --gpus all -v $PWD/data:/data dangerclip/train:0.1.0 pseudomask --help
#
# PyPI's Linux torch wheels carry their own CUDA libraries, so a slim Python base serves CPU and GPU
# alike; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a much smaller CPU-only image.
# Weights (CLIP, GroundingDINO, SAM) are never baked in: mount them (the Helm Job mounts a PVC).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for the dependencies that ship only source distributions (pycocotools, GroundingDINO's ops).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dangerclip/ dangerclip/
COPY service/ service/
COPY training/ training/
COPY pseudomask/ pseudomask/
# Ranges from pyproject.toml, not pins: torch and its CUDA wheels are chosen per platform and index.
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && pip install --no-cache-dir ".[pseudomask]" \
    && python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dangerclip-train" \
      org.opencontainers.image.description="DangerCLIP training, export and pseudo-mask jobs (torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# OpenCV (pulled in by GroundingDINO and supervision) needs these shared libraries at import time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dangerclip \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dangerclip
COPY --from=build /opt/venv /opt/venv
# Caches (torch hub, Hugging Face) go to /tmp so the root filesystem can stay read-only; point them at a
# volume to keep them between runs. HF_HUB_OFFLINE: weights come from mounted files, never the network.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/.cache/matplotlib
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["dangerclip"]
CMD ["--help"]
