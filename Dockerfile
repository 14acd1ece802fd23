# One image for every PhoenixFL service (dataflow, devices, dashboard, training).
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libpcap0.8 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The CPU wheel of torch first, so the pinned torch==2.13.0 in pyproject is already satisfied.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY phoenix phoenix
COPY flows flows
COPY fl fl
COPY capture capture
COPY dashboards dashboards
COPY models models
RUN pip install --no-cache-dir .
ENV PHOENIX_AMQP_URL=amqp://guest:guest@rabbitmq:5672/%2F
