# syntax=docker/dockerfile:1
# inferlane server image: docs/deploy.md has the build, push and run commands.
#
#   docker build -t inferlane:0.1.0 .
#   docker run -p 8080:8080 -v $PWD/models:/opt/ml/model inferlane:0.1.0 serve      # SageMaker contract
#   docker run -p 8000:8000 -v $PWD/models:/models inferlane:0.1.0                   # Kubernetes convention

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: a virtual environment from the lockfile ------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=batch,redis,stream,grpc,sklearn
ENV UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install --no-cache-dir "uv==0.9.*"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY src/ src/
# The lockfile pins every dependency; --compile-bytecode so that no process recompiles its imports on start.
RUN python -m venv /opt/inferlane \
 && uv pip install --python /opt/inferlane/bin/python --no-cache --compile-bytecode \
      -c requirements/lock.txt ".[${EXTRAS}]"

# ---- runtime: the venv and the entrypoint, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 inferlane \
 && useradd --system --uid 10001 --gid inferlane --home-dir /home/inferlane --create-home inferlane \
 && mkdir -p /models /opt/ml/model /tmp/inferlane && chown inferlane:inferlane /tmp/inferlane
COPY --from=build /opt/inferlane /opt/inferlane
COPY docker/entrypoint.sh /usr/local/bin/inferlane-entrypoint
ENV PATH=/opt/inferlane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INFERLANE_HOST=0.0.0.0 \
    INFERLANE_MODEL_REPOSITORY=/models \
    INFERLANE_STATE_DIR=/tmp/inferlane
# SageMaker expects a container that may run as root; this image runs as an unprivileged user, which
# works as long as /opt/ml/model is readable by it (SageMaker mounts it world-readable).
USER 10001:10001
WORKDIR /home/inferlane
EXPOSE 8000 8080
# Ready = every model version loaded and warmed up: /ping in SageMaker mode (port 8080), else /v2/health/ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; sm = os.environ.get('INFERLANE_SAGEMAKER') or os.path.exists('/tmp/.inferlane-sagemaker'); url = 'http://127.0.0.1:8080/ping' if sm else 'http://127.0.0.1:%s/v2/health/ready' % os.environ.get('INFERLANE_PORT', '8000'); sys.exit(0 if u.urlopen(url, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/inferlane-entrypoint"]
