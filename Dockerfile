# The operator's image. It also runs the reference pipeline process, the default workload of the
# Kubernetes backend (`pipeline-operator pipeline-process`).
#
#   docker build -t ghcr.io/pipeline-operator/pipeline-operator:0.1.0 .

# --- build: a wheel of the project and of every runtime dependency ---------------------------
# No extras: the `dev` extra (cryptography and PyYAML, for the local control plane and the demo in
# pipeline_operator_dev) is not the operator's. cryptography stays out of the image; PyYAML comes in
# only as a dependency of kopf and kubernetes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- run: no compilers, no pip cache, a non-root user ------------------------------------------
FROM python:3.11-slim
RUN groupadd --gid 10001 operator && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin operator
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels pipeline-operator && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/pipeline-operator
EXPOSE 8080
ENTRYPOINT ["pipeline-operator"]
CMD ["run", "--all-namespaces", "--backend", "kubernetes"]
