# syntax=docker/dockerfile:1
# The operator's image, for those with Docker (BuildKit). `make image` builds the same image without
# Docker, from the same files: Debian bookworm's Python 3.11, the wheels pinned with their hashes in
# image/requirements.txt installed by image/install.sh, and the configuration below, which it reads
# from this file. The image also runs the reference pipeline process, the default workload of the
# Kubernetes backend (`pipeline-operator pipeline-process`).
#
#   docker build -t localhost/pipeline-operator:0.1.0 .      (then: README, Installing)

# --- build: the wheels of every pinned dependency (checked against their hashes) and of the project
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3-pip python3-venv
RUN python3.11 -m venv /build
COPY image/ /src/image/
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
RUN /build/bin/pip download --no-cache-dir --no-deps --require-hashes --only-binary=:all: --dest /wheels \
        -r /src/image/requirements.txt -r /src/image/pip.txt \
 && /build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src \
 && cp /src/image/requirements.txt /src/image/install.sh /wheels/

# --- run: Debian's Python, no compilers, no pip, no package caches, a non-root user --------------
FROM debian:bookworm-slim
ARG VERSION=0.1.0
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels sh /wheels/install.sh /wheels
ENV PATH=/opt/pipeline-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PYTHONUNBUFFERED=1
# Two malloc arenas, not eight per core: the operator's threads (Kubernetes clients, watches) would
# otherwise each keep freed memory in an arena of their own (about 10% of RSS with 200 pipelines).
ENV MALLOC_ARENA_MAX=2
LABEL org.opencontainers.image.title="pipeline-operator"
LABEL org.opencontainers.image.description="Runs data pipelines through Feldera's pipeline lifecycle on Kubernetes and keeps their monitoring history."
LABEL org.opencontainers.image.version="${VERSION}"
LABEL org.opencontainers.image.licenses="Apache-2.0"
LABEL org.opencontainers.image.base.name="debian:bookworm"
USER 10001:10001
WORKDIR /var/lib/pipeline-operator
EXPOSE 8080
ENTRYPOINT ["pipeline-operator"]
CMD ["run", "--all-namespaces", "--backend", "kubernetes"]
