# Bake a model into a serving image (context: a directory holding the MLflow model in `model/`).
# Two stages, built by the bake step (python -m release.build) in two builds:
# 1. `convert`, FROM the sklearn variant: compiles the model to ONNX and checks it against sklearn
#    (serving.convert), writing /tmp/compiled/serving.json. The bake step builds this target
#    first and reads that file from a short-lived container: the final FROM cannot depend on a
#    RUN's result, so the variant is chosen between the two builds.
# 2. the image itself, FROM the chosen variant (SERVING_RUNTIME_IMAGE): the lean image when the
#    compiled path passed (`path: onnx`), the sklearn variant when it did not. The second build
#    reuses the first one's cached convert stage.
# By hand:
#   docker build -f serving/model.Dockerfile --target convert \
#     --build-arg SERVING_SKLEARN_IMAGE=conveyor/serving-sklearn:<tag> -t bake-convert CTX
#   docker run --rm bake-convert cat /tmp/compiled/serving.json     # "path": "onnx" or "sklearn"
#   docker build -f serving/model.Dockerfile --build-arg SERVING_SKLEARN_IMAGE=... \
#     --build-arg SERVING_RUNTIME_IMAGE=conveyor/serving:<tag> --build-arg MODEL_NAME=conveyor \
#     --build-arg MODEL_VERSION=3 -t conveyor/serving-model:conveyor-v3 CTX
ARG SERVING_SKLEARN_IMAGE=conveyor/serving-sklearn:missing
ARG SERVING_RUNTIME_IMAGE=${SERVING_SKLEARN_IMAGE}

# hadolint ignore=DL3057
FROM ${SERVING_SKLEARN_IMAGE} AS convert
COPY model/ /app/model/
RUN python -m serving.convert /app/model /tmp/compiled

FROM ${SERVING_RUNTIME_IMAGE}
ARG MODEL_NAME=conveyor
ARG MODEL_VERSION=unknown
LABEL io.conveyor.model.name="${MODEL_NAME}" \
      io.conveyor.model.version="${MODEL_VERSION}"
COPY model/ /app/model/
COPY --from=convert /tmp/compiled/ /app/compiled/
ENV MODEL_SOURCE=baked \
    MODEL_DIR=/app/model \
    COMPILED_DIR=/app/compiled \
    MODEL_NAME=${MODEL_NAME} \
    MODEL_VERSION=${MODEL_VERSION}
USER 1000:1000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
