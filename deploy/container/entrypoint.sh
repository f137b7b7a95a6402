#!/bin/sh
# The entrypoint of ff serve's container image (docs/delivery.md, "Container image").
#
#   FF_MODELS      comma-separated models to serve; those with a registry host (host[:port]/ns/name:tag)
#                  are pulled now, before the server starts, so a model that is missing, unsigned or
#                  signed by another key (FF_VERIFY_KEY, FF_REQUIRE_SIGNATURE=1) stops the container
#                  with ff's exit code (4 auth, 5 network, 6 signature) and nothing of it stored.
#   FF_MODELS_DIR  a mounted model folder (KServe's /mnt/models, an image volume) served as well.
#   Registry credentials: FF_REGISTRY_HOST/_USERNAME/_PASSWORD(_FILE), or a mounted $DOCKER_CONFIG.
# Arguments are passed to `ff serve` (e.g. --port=8080 --models-dir=/mnt/models --model-name=NAME).
set -eu

export FF_HOST="${FF_HOST:-0.0.0.0}"
export FF_PORT="${FF_PORT:-11435}"
export FF_HOME="${FF_HOME:-/var/lib/ferrousforge}"

has_registry_host() {  # Docker's rule: the first path part names a host if it has a dot or a port
  case "$1" in
    */*) first=${1%%/*} ;;
    *) return 1 ;;
  esac
  case "$first" in
    *.*|*:*|localhost) return 0 ;;
    *) return 1 ;;
  esac
}

if [ -n "${FF_MODELS:-}" ]; then
  for model in $(printf '%s' "$FF_MODELS" | tr ',' ' '); do
    if has_registry_host "$model"; then
      echo "ff-entrypoint: pulling $model" >&2
      ff pull --quiet "$model" || { status=$?; echo "ff-entrypoint: pull of $model failed ($status)" >&2; exit "$status"; }
    fi
  done
fi

exec ff serve "$@"
