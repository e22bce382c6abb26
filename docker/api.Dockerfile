# syntax=docker/dockerfile:1
# The API image: gunicorn + Flask, `covidscan migrate` and the CLI. No TensorFlow:
# the web tier never imports the worker or the model code.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same numeric user in both images, so the API (writer) and the workers (readers)
# agree on who owns the uploads volume.
RUN groupadd --system --gid 10001 covidscan \
    && useradd --system --uid 10001 --gid covidscan --create-home --home-dir /home/covidscan \
        --shell /usr/sbin/nologin covidscan

WORKDIR /app
COPY requirements-api.txt ./
RUN pip install -r requirements-api.txt

COPY pyproject.toml README.md ./
COPY covidscan ./covidscan
COPY core ./core
COPY cli ./cli
COPY db ./db
COPY api ./api
COPY dicomnet ./dicomnet
RUN pip install --no-deps . \
    && mkdir -p /data/blobs \
    && chown covidscan:covidscan /data/blobs

USER covidscan
EXPOSE 5000
CMD ["gunicorn", "--bind", "0.0.0.0:5000", "api:create_app()"]
