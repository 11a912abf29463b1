# The operator: slim Python, the project with the "operator" extra only (no torch).
#   docker build -f images/operator.Dockerfile -t ghcr.io/therapy-rlhf/operator:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY therapy_rlhf ./therapy_rlhf
COPY operator ./operator
COPY jobs ./jobs
COPY tui ./tui
# A regular (not editable) install: the image needs no source tree at run time.
RUN pip install ".[operator]" && rm -rf /src

# Non-root, matching the chart's runAsUser; the root filesystem is mounted read-only.
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin operator
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "therapy_rlhf.operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
