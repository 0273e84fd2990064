# tokend as a container image: the daemon keeps the token fresh in /run/tokend (a
# volume: token files, the socket, proxy.env) and serves the local proxy on loopback.
# Kubernetes manifests (tokend as a native sidecar): `tokend deploy kubernetes`.
#
#   docker build -t tokend:0.1.0 .
#
# Two stages: the build stage makes a virtualenv with tokend and its dependencies; the
# run stage gets that virtualenv and nothing else of the build (no compiler, no pip
# cache, no source). At run time nothing needs a shell: the entrypoint and the health
# check are exec form, running the tokend command.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package is built from (.dockerignore keeps everything else out of the
# build context: no credentials, keys, virtualenvs or caches can be copied in).
COPY pyproject.toml README.md ./
COPY tokend/ tokend/
RUN python -m venv /opt/tokend \
    && /opt/tokend/bin/pip install --no-cache-dir /src \
    && /opt/tokend/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm
# The same base as the build stage: the virtualenv's python is this image's.
COPY --from=build /opt/tokend /opt/tokend
# 65532: a non-root uid with no name needed (distroless' "nonroot"). The runtime dir
# is 0700 and this user's, as tokend requires; so is the state dir (the proxy's keys).
# HOME (where `credentials = "adc"` looks for gcloud's file) is 0755, so that a
# container run with --user as someone else still reaches a gcloud dir mounted there.
RUN install -d -m 0700 -o 65532 -g 65532 /run/tokend /var/lib/tokend \
    && install -d -m 0755 -o 65532 -g 65532 /home/tokend
# DL3064 reads "TOKEN" in TOKEND_* as a secret; these name directories, not secrets.
# hadolint ignore=DL3064
ENV PATH=/opt/tokend/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/tokend \
    TOKEND_RUNTIME_DIR=/run/tokend \
    TOKEND_STATE_DIR=/var/lib/tokend
USER 65532:65532
# Mount a directory here (docker run -v DIR:/run/tokend, with --user matching DIR's
# owner), never single files: each new token is a new file renamed into place.
VOLUME ["/run/tokend"]
# /healthz on the socket: healthy once every profile holds a valid token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["tokend", "health"]
# The configuration: a mounted file named by TOKEND_CONFIG (or --config after the image
# name), else $HOME/.config/tokend/config.toml, else the defaults; TOKEND_* variables
# override it.
ENTRYPOINT ["tokend", "run"]
