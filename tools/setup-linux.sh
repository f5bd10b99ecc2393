#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to load TorchSharp's native library and,
# optionally, installs the offline sample dataset.
#
# TorchSharp 0.107 ships a libLibTorchSharp.so linked against GCC 13's
# libstdc++ (symbol version GLIBCXX_3.4.32). Debian 12 ships GCC 12's, so the
# native backend refuses to load until libstdc++6 comes from Debian 13.
#
# Usage: tools/setup-linux.sh [--with-datasets]
set -euo pipefail

want_datasets=0
for arg in "$@"; do
  case "$arg" in
    --with-datasets) want_datasets=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

is_root() { [ "$(id -u)" -eq 0 ]; }
have_apt() { command -v apt-get >/dev/null 2>&1; }

find_libstdcxx() {
  # The loader's own view first; fall back to the usual Debian location.
  local p
  p=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')
  [ -n "$p" ] || p=/usr/lib/x86_64-linux-gnu/libstdc++.so.6
  echo "$p"
}

libstdcxx_ok() {
  local lib
  lib=$(find_libstdcxx)
  [ -e "$lib" ] && grep -qa 'GLIBCXX_3\.4\.32' "$lib"
}

trixie_source=/etc/apt/sources.list.d/trixie.sources
trixie_cmd="printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | sudo tee $trixie_source
printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' | sudo tee /etc/apt/preferences.d/trixie-low
sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -t trixie libstdc++6"

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}

if [ "$(uname -s)" != Linux ]; then
  echo "setup: not Linux; nothing to do (TorchSharp's Windows and macOS natives have no libstdc++ requirement)."
elif libstdcxx_ok; then
  echo "setup: libstdc++ provides GLIBCXX_3.4.32: TorchSharp's native library can load."
else
  echo "setup: $(find_libstdcxx) lacks GLIBCXX_3.4.32, which TorchSharp 0.107's native library needs."
  if ! is_root || ! have_apt; then
    echo "setup: cannot install it from here (need root and apt-get). Run, as an administrator:" >&2
    echo "$trixie_cmd" >&2
    echo "setup: on non-Debian systems, install libstdc++ from GCC 13 or newer." >&2
    exit 1
  fi
  if ! grep -rqs 'trixie' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > "$trixie_source"
    # Keep trixie from upgrading anything we did not ask for.
    mkdir -p /etc/apt/preferences.d
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/trixie-low
    echo "setup: added $trixie_source (pinned low, used only on request)."
  fi
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie libstdc++6 >/dev/null
  if libstdcxx_ok; then
    echo "setup: installed libstdc++6 from Debian 13 (trixie)."
  else
    echo "setup: libstdc++6 from trixie installed, but GLIBCXX_3.4.32 is still missing." >&2
    exit 1
  fi
fi

if [ "$want_datasets" -eq 1 ]; then
  fmnist=/usr/share/datasets/fashion-mnist
  if [ -d "$fmnist" ] && ls "$fmnist" | grep -q 't10k'; then
    echo "setup: Fashion-MNIST present in $fmnist."
  elif is_root && have_apt; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    echo "setup: installed Debian's dataset-fashion-mnist into $fmnist."
  else
    echo "setup: Fashion-MNIST is missing; install it with: sudo apt-get install dataset-fashion-mnist" >&2
    echo "setup: (the sample can still read CIFAR-10 from --data)" >&2
  fi
fi
