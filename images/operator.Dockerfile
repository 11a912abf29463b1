# The operator: slim Python, the project with the "operator" extra only (no torch).
#   docker build -f images/operator.Dockerfile -t ghcr.io/therapy-rlhf/operator:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY images/ml-stack.txt images/constraints.txt ./
COPY pyproject.toml README.md ./
COPY therapy_rlhf ./therapy_rlhf
COPY operator ./operator
COPY jobs ./jobs
COPY tui ./tui
# The same wheel CI builds and installs (tests/packaging), at the tested versions: a regular
# install, so the image needs no source tree at run time.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install -c ml-stack.txt -c constraints.txt "$(ls /wheels/therapy_rlhf-*.whl)[operator]" \
 && rm -rf /src /wheels

# Non-root, matching the chart's runAsUser; the root filesystem is mounted read-only.
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin operator
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "therapy_rlhf.operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
