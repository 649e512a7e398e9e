# The sklearn variant of the prediction server: the lean image's runtime plus scikit-learn,
# pandas, skops, skl2onnx/onnx, mlflow-skinny and dvc. It serves
# - a baked model whose compiled path failed the parity check or cannot be converted (the bake
#   step, python -m release.build, picks this variant then), with sklearn;
# - a model fetched at start-up (MODEL_SOURCE=mlflow: the registry's champion; MODEL_SOURCE=dvc),
#   compiled once into CACHE_DIR (outside MODEL_DIR), served by ONNX when it matches sklearn;
# and it is where serving/model.Dockerfile compiles a model at bake time.
# Built from the repository root (make images). Same hardening as serving/Dockerfile.
# BUILDER_IMAGE: conveyor/builder:<tag>, built first by scripts/build-images.sh.
ARG BUILDER_IMAGE
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# hadolint ignore=DL3057
FROM ${BUILDER_IMAGE} AS builder
COPY pyproject.toml uv.lock /app/
RUN uv sync --frozen --no-install-project --no-default-groups --group serving --group serving-sklearn \
 && find /app/.venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +
COPY serving/ /app/serving/
RUN /app/.venv/bin/python -m compileall -q /app/serving

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="conveyor-serving-sklearn" \
      org.opencontainers.image.description="Conveyor prediction server with the sklearn fallback, start-up compilation and registry/DVC fetch" \
      org.opencontainers.image.licenses="MIT" \
      io.conveyor.serving.variant="sklearn"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# uid/gid 1000, no home of its own (HOME=/tmp, the only writable place). DVC without git.
RUN groupadd --gid 1000 conveyor \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin conveyor \
 && mkdir -p /app/model /app/compiled /etc/xdg/dvc \
 && printf '[core]\n    no_scm = true\n    analytics = false\n    check_update = false\n' > /etc/xdg/dvc/config
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/serving /app/serving
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    DVC_NO_ANALYTICS=1 \
    MODEL_SOURCE=baked \
    MODEL_DIR=/app/model \
    COMPILED_DIR=/app/compiled \
    CACHE_DIR=/tmp/conveyor-serving \
    PORT=8000
WORKDIR /app
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
ENTRYPOINT ["/app/serving/docker-entrypoint.sh"]
CMD ["python", "-m", "serving"]
