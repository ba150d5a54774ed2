#!/usr/bin/env bash
# Make the offline data sets available. Idempotent; never fails the setup: when the data cannot be
# installed it says how to get it (the data-loading code gives the same hint when it is missing).
set -u
FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] || [ -n "${SPARSENETS_FASHION_MNIST:-}" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }
fi
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "setup: Fashion-MNIST is not installed. Install it with 'sudo apt-get install dataset-fashion-mnist'," >&2
  echo "       or download the four *-ubyte.gz files and set SPARSENETS_FASHION_MNIST=/path/to/dir." >&2
fi
exit 0
