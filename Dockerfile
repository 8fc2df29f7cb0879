# syntax=docker/dockerfile:1
# segflow worker / simulator image. Build: docker build -t segflow .
# Two stages: dependencies are installed into a virtualenv in the build stage and
# copied into a clean runtime stage that runs as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11: no compiler needed.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY features ./features
COPY segmenter ./segmenter
COPY lab ./lab
COPY segflow ./segflow
RUN pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 segflow \
 && useradd --system --uid 10001 --gid segflow --create-home --home-dir /home/segflow segflow \
 && mkdir -p /app \
 && chown segflow:segflow /app
COPY --from=build /opt/venv /opt/venv
# Faust keeps its local state (<app>-data/) in the working directory.
WORKDIR /app
USER segflow
CMD ["segflow", "worker"]
