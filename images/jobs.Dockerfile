# The training jobs on NVIDIA GPUs: the CUDA 12.8 runtime with cuDNN, torch's CUDA 12.8 build,
# the "jobs" extra and bitsandbytes (QLoRA), every ML package at the tested versions in
# images/ml-stack.txt. The operator runs it as
#   python -m therapy_rlhf.jobs <kind> --run-config /etc/therapy-rlhf/run.json --round N --store URI
# (under `accelerate launch --multi_gpu --num_processes G` when a run asks for several GPUs).
#   docker build -f images/jobs.Dockerfile -t ghcr.io/therapy-rlhf/jobs:0.1.0 .
# The base image's CUDA (12.8.1) matches the torch wheel's (cu128); the node's driver must
# support CUDA 12.8 (R570 or newer).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
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
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv

WORKDIR /src
COPY images/ml-stack.txt images/constraints.txt ./
# torch first, from the CUDA index, at the tested version; everything after is held to the same set.
RUN pip install -c ml-stack.txt -c constraints.txt torch --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY therapy_rlhf ./therapy_rlhf
COPY operator ./operator
COPY jobs ./jobs
COPY tui ./tui
# The same wheel CI builds and installs (tests/packaging): built here from the source, then
# installed like any other package, so the image needs no source tree at run time.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install -c ml-stack.txt -c constraints.txt "$(ls /wheels/therapy_rlhf-*.whl)[jobs]" bitsandbytes \
 && rm -rf /src /wheels

RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin trainer
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT []
CMD ["python", "-m", "therapy_rlhf.jobs", "--help"]
