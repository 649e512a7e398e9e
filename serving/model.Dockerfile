# Bake a model into the serving image (context: a directory holding the model in `model/`):
#   docker build -f serving/model.Dockerfile --build-arg SERVING_IMAGE=conveyor/serving:<tag> \
#     --build-arg MODEL_NAME=conveyor --build-arg MODEL_VERSION=3 -t conveyor/serving-model:3 CTX
# The compiled fast path is built here, so the container starts without importing sklearn.
ARG SERVING_IMAGE=conveyor/serving:latest
FROM ${SERVING_IMAGE}
ARG MODEL_NAME=conveyor
ARG MODEL_VERSION=unknown
LABEL io.conveyor.model.name="${MODEL_NAME}" \
      io.conveyor.model.version="${MODEL_VERSION}"
USER 0:0
COPY model/ /app/model/
RUN python -m serving.compile /app/model && chmod -R a+rX /app/model
USER 1000:1000
ENV MODEL_SOURCE=baked \
    MODEL_DIR=/app/model \
    MODEL_NAME=${MODEL_NAME} \
    MODEL_VERSION=${MODEL_VERSION}
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
