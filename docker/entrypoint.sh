#!/bin/sh
# The image's entrypoint: `inferlane serve` under the SageMaker or the Kubernetes convention.
#
#   docker run IMAGE serve                 SageMaker: /ping and /invocations on 0.0.0.0:8080, model from
#                                          /opt/ml/model (SageMaker runs every inference image this way)
#   docker run IMAGE                       Kubernetes: settings from INFERLANE_* (the image sets
#                                          INFERLANE_HOST=0.0.0.0 and INFERLANE_MODEL_REPOSITORY=/models)
#   docker run IMAGE jobs worker /models   any other inferlane command, as given
#
# `exec` keeps the server as PID 1's direct replacement, so SIGTERM from docker stop, the kubelet or
# SageMaker reaches it: it drains in-flight requests and exits 0.
set -eu
INFERLANE="${INFERLANE_BIN:-inferlane}"
if [ "$#" -eq 0 ]; then
  exec "$INFERLANE" serve
fi
if [ "$1" = "serve" ] && [ "$#" -eq 1 ]; then
  # SageMaker passes exactly `serve`; its defaults win over the image's Kubernetes ones unless the model's
  # container definition sets INFERLANE_* itself.
  if [ "${INFERLANE_MODEL_REPOSITORY:-}" = "/models" ] && [ -z "${INFERLANE_KEEP_REPOSITORY:-}" ]; then
    unset INFERLANE_MODEL_REPOSITORY
  fi
  : > /tmp/.inferlane-sagemaker 2>/dev/null || true  # tells the image's HEALTHCHECK to ask /ping on 8080
  exec "$INFERLANE" serve --sagemaker
fi
exec "$INFERLANE" "$@"
