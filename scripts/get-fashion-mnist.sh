#!/usr/bin/env bash
# Put the Fashion-MNIST IDX files where kdforge looks for them, without root if need be:
# the Debian package dataset-fashion-mnist is downloaded and unpacked into the user cache folder.
set -euo pipefail
dest="${1:-$HOME/.cache/kdforge/datasets/fashion-mnist}"
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { for f in $files; do [ -s "$1/$f" ] || return 1; done; }
if have /usr/share/datasets/fashion-mnist || have "$dest"; then
  echo "fashion-mnist: already present"; exit 0
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download dataset-fashion-mnist >/dev/null 2>&1; then
  # A fresh machine may have empty package lists; refresh them when we are allowed to.
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
  apt-get download dataset-fashion-mnist >/dev/null 2>&1 || {
    echo "could not download the Debian package dataset-fashion-mnist." >&2
    echo "Install it (sudo apt-get install dataset-fashion-mnist) or put the four IDX .gz files in $dest" >&2
    exit 1
  }
fi
dpkg -x dataset-fashion-mnist_*.deb unpacked
mkdir -p "$dest"
for f in $files; do cp "unpacked/usr/share/datasets/fashion-mnist/$f" "$dest/$f.part" && mv "$dest/$f.part" "$dest/$f"; done
echo "fashion-mnist: installed in $dest"
