# syntax=docker/dockerfile:1
# The inference worker: TensorFlow's image (GPU by default) plus covidscan's worker code.
# docker-compose.cpu.yml builds it on TensorFlow's CPU image through BASE_IMAGE.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# The TensorFlow version requirements.txt pins; the build stops if the base image differs.
ARG TENSORFLOW_VERSION=2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=1

# Same numeric user as the API image (see docker/api.Dockerfile).
RUN groupadd --system --gid 10001 covidscan \
    && useradd --system --uid 10001 --gid covidscan --create-home --home-dir /home/covidscan \
        --shell /usr/sbin/nologin covidscan

WORKDIR /app
COPY requirements-worker.txt ./
RUN python3 -c "from importlib.metadata import version; found = version('tensorflow'); \
assert found == '${TENSORFLOW_VERSION}', f'base image has tensorflow {found}, expected ${TENSORFLOW_VERSION}'" \
    && python3 -m pip install -r requirements-worker.txt

COPY pyproject.toml README.md ./
COPY covidscan ./covidscan
COPY core ./core
COPY cli ./cli
COPY db ./db
COPY models ./models
COPY worker ./worker
RUN python3 -m pip install --no-deps . \
    && mkdir -p /data/blobs /data/model-store /data/engine-cache /models \
    && chown covidscan:covidscan /data/blobs /data/model-store /data/engine-cache

USER covidscan
CMD ["celery", "-A", "worker.celery_app", "worker", "--pool", "solo", "--concurrency", "1", \
     "--queues", "covidscan", "--hostname", "worker@%h", "--without-gossip", "--without-mingle"]
