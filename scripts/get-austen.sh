#!/usr/bin/env bash
# Jane Austen's novels for the LLM benchmarks: the Debian package r-cran-janeaustenr unpacked into the user cache
# (a plain `apt-get install` would pull ~700 R packages; kdforge reads the R data files without R).
set -euo pipefail
dest="${1:-$HOME/.cache/kdforge/datasets/janeaustenr}"
if [ -s /usr/lib/R/site-library/janeaustenr/data/Rdata.rdb ] || [ -s "$dest/Rdata.rdb" ]; then
  echo "janeaustenr: already present"; exit 0
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download r-cran-janeaustenr >/dev/null 2>&1 || {
  echo "could not download the Debian package r-cran-janeaustenr; put its data folder in $dest" >&2; exit 1; }
dpkg -x r-cran-janeaustenr_*.deb unpacked
mkdir -p "$dest"
cp unpacked/usr/lib/R/site-library/janeaustenr/data/Rdata.* "$dest/"
echo "janeaustenr: installed in $dest"
