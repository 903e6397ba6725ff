# ledgerflow: the coordinator and the Python SDK (workers) in one image.
#
#   docker build -t ledgerflow .
#   docker run --rm -p 7170:7170 ledgerflow                      # coordinator on SQLite in /data
#   docker run --rm ledgerflow ledgerflow worker examples.order_saga --address coordinator:7170
#
# docker-compose.yml runs it against Postgres with an example worker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the wheel and the examples need (see .dockerignore); the project is installed
# as a regular (non-editable) package with the coordinator's extra.
COPY pyproject.toml README.md ./
COPY sdk/python ./sdk/python
COPY coordinator ./coordinator
RUN pip install '.[coordinator]'

# The examples are a package of the working directory: `ledgerflow worker examples.order_saga`
# imports them from here.
COPY examples ./examples

# A non-root user owns only the data directory (the embedded SQLite file lives there).
RUN useradd --system --uid 10001 --home-dir /data --create-home ledgerflow
USER ledgerflow

ENV LEDGERFLOW_LISTEN=0.0.0.0:7170 \
    LEDGERFLOW_DATABASE_URL=sqlite:////data/ledgerflow.db
EXPOSE 7170

# The standard gRPC health check (grpc.health.v1): SERVING once migrated and listening,
# NOT_SERVING while shutting down. No grpc_health_probe binary: the image's Python asks.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:7170')).Check(h.HealthCheckRequest(), timeout=2); raise SystemExit(r.status != h.HealthCheckResponse.SERVING)"]

CMD ["ledgerflow", "server"]
