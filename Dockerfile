# One image for every Hyperforge role (api, worker, migrate, flower); the role is
# the command. The base is NVIDIA's CUDA runtime so the worker can use the GPU;
# the API runs from the same image and never imports torch.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# The CUDA build of the pinned torch release; pyproject's torch==2.13.0 pin is then
# already satisfied (2.13.0+cu128 matches ==2.13.0), so pip keeps this build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates curl \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python3.11 -m venv $VIRTUAL_ENV && pip install --no-cache-dir --upgrade pip

RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir ".[ops]" \
 && pip install --no-cache-dir --no-deps open_clip_torch==3.3.0

RUN useradd --create-home --uid 10001 hyperforge && mkdir -p /data && chown hyperforge /data
USER hyperforge
EXPOSE 8000
CMD ["hyperforge", "serve", "--host", "0.0.0.0", "--port", "8000"]
