# The training jobs on NVIDIA GPUs: CUDA runtime, torch (CUDA build), the "jobs" extra,
# bitsandbytes for QLoRA. The operator runs it as
#   python -m therapy_rlhf.jobs <kind> --run-config /etc/therapy-rlhf/run.json --round N --store URI
# (under `accelerate launch --num_processes G` when a run asks for several GPUs).
#   docker build -f images/jobs.Dockerfile -t ghcr.io/therapy-rlhf/jobs:0.1.0 .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ARG TORCH_VERSION=2.6.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/var/cache/therapy-rlhf/huggingface \
    THERAPY_RLHF_CACHE=/var/cache/therapy-rlhf

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

# torch first, from the CUDA index: the project's range accepts it and pip keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY therapy_rlhf ./therapy_rlhf
COPY operator ./operator
COPY jobs ./jobs
COPY tui ./tui
RUN pip install ".[jobs]" "bitsandbytes>=0.45" && rm -rf /src

RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin trainer
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT []
CMD ["python", "-m", "therapy_rlhf.jobs", "--help"]
