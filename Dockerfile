# The operator's image (`specpilot run`, the default; also plan, render, validate, crd). Only the
# specpilot distribution (operator/) is copied and installed: the lab (lab/, specpilot-lab: the
# vLLM stand-in, pod runner, load generator, demo) has its own image, lab/Dockerfile.
# Multi-stage: wheels are built in the first stage, the runtime stage has no compiler and no pip
# cache, and runs as an unprivileged user with a numeric UID (so `runAsNonRoot` can be verified by
# the kubelet). Base images are pinned to a patch release.
FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="specpilot" \
      org.opencontainers.image.description="Kubernetes operator for vLLM with speculative decoding" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
# The version is pyproject.toml's (a test keeps them equal).
RUN pip install --no-cache-dir --no-index --find-links /wheels specpilot==0.1.0 \
    && rm -rf /wheels
USER 65532:65532
# glibc gives each thread its own malloc arena; the control loop's check threads then hold on to
# memory Python has freed. Two arenas keep the operator's RSS near what it uses (bench/scale.py:
# 227 MB instead of 315 MB with 1,000 resources).
ENV MALLOC_ARENA_MAX=2
# Checkpoint metadata read from the hub is cached under /tmp, the one writable place (an
# emptyDir: the root filesystem is read-only).
ENV HF_HOME=/tmp/huggingface
# The operator's liveness (8080), metrics (9100) and webhook (9443, with --webhook-port 9443).
EXPOSE 8080 9100 9443
ENTRYPOINT ["specpilot"]
CMD ["run"]
