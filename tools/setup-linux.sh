#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to load TorchSharp's native library and,
# optionally, installs the offline sample dataset. build.cake's Setup task runs
# it before the Test and Sample targets; it can also be run by hand.
#
# TorchSharp 0.107 ships a libLibTorchSharp.so linked against GCC 13's
# libstdc++ (symbol version GLIBCXX_3.4.32). Debian 12 ships GCC 12's, so the
# native backend refuses to load until libstdc++6 comes from Debian 13.
#
# As root with apt-get, it installs whatever is missing. Otherwise it changes
# nothing, prints the exact commands to run, and exits with status 1.
#
# Usage: tools/setup-linux.sh [--with-datasets]
#   --with-datasets   also require Fashion-MNIST (Debian's dataset-fashion-mnist),
#                     the sample's offline data set
set -euo pipefail

want_datasets=0
for arg in "$@"; do
  case "$arg" in
    --with-datasets) want_datasets=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

if [ "$(uname -s)" != Linux ]; then
  echo "setup: not Linux; nothing to do (TorchSharp's Windows and macOS natives have no libstdc++ requirement)."
  exit 0
fi

can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }

# The library the dynamic loader would pick: LD_LIBRARY_PATH comes before the
# ldconfig cache, and the .NET host has loaded that one before TorchSharp asks.
locate_libstdcxx() {
  libstdcxx=""
  libstdcxx_via_ld_library_path=0
  local dir
  local IFS=:
  for dir in ${LD_LIBRARY_PATH:-}; do
    if [ -n "$dir" ] && [ -e "$dir/libstdc++.so.6" ]; then
      libstdcxx="$dir/libstdc++.so.6"
      libstdcxx_via_ld_library_path=1
      return
    fi
  done
  libstdcxx=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')
  [ -n "$libstdcxx" ] || libstdcxx=/usr/lib/x86_64-linux-gnu/libstdc++.so.6
}

locate_libstdcxx
libstdcxx_ok() { [ -e "$libstdcxx" ] && grep -qa 'GLIBCXX_3\.4\.32' "$libstdcxx"; }

fmnist=/usr/share/datasets/fashion-mnist
fmnist_ok() { [ -d "$fmnist" ] && ls "$fmnist" | grep -q 't10k'; }

trixie_source=/etc/apt/sources.list.d/trixie.sources
trixie_pin=/etc/apt/preferences.d/trixie-low
write_trixie_source() { printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'; }
# Keeps trixie from upgrading anything that was not asked for by name.
write_trixie_pin() { printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n'; }

need_libstdcxx=0
need_fmnist=0
if libstdcxx_ok; then
  echo "setup: $libstdcxx provides GLIBCXX_3.4.32: TorchSharp's native library can load."
else
  echo "setup: $libstdcxx lacks GLIBCXX_3.4.32, which TorchSharp 0.107's native library needs." >&2
  need_libstdcxx=1
fi
if [ "$want_datasets" -eq 1 ]; then
  if fmnist_ok; then
    echo "setup: Fashion-MNIST present in $fmnist."
  else
    echo "setup: Fashion-MNIST, the sample's offline data set, is not in $fmnist." >&2
    need_fmnist=1
  fi
fi
if [ "$need_libstdcxx" -eq 0 ] && [ "$need_fmnist" -eq 0 ]; then
  exit 0
fi

# A library chosen through LD_LIBRARY_PATH shadows whatever apt installs.
if [ "$need_libstdcxx" -eq 1 ] && [ "$libstdcxx_via_ld_library_path" -eq 1 ]; then
  echo "setup: that libstdc++ comes from LD_LIBRARY_PATH ($LD_LIBRARY_PATH), so installing the system's would not help." >&2
  echo "setup: remove its directory from LD_LIBRARY_PATH, or put a libstdc++ from GCC 13 or newer there." >&2
  exit 1
fi

if ! can_install; then
  echo "setup: nothing was installed (that needs root and apt-get). Run, as an administrator:" >&2
  if [ "$need_libstdcxx" -eq 1 ]; then
    echo "" >&2
    echo "  printf 'Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: trixie\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' | sudo tee $trixie_source" >&2
    echo "  printf 'Package: *\\nPin: release n=trixie\\nPin-Priority: 100\\n' | sudo tee $trixie_pin" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -t trixie libstdc++6" >&2
  fi
  if [ "$need_fmnist" -eq 1 ]; then
    echo "" >&2
    echo "  sudo apt-get install -y dataset-fashion-mnist" >&2
  fi
  echo "" >&2
  echo "setup: or run 'sudo tools/setup-linux.sh$([ "$want_datasets" -eq 1 ] && echo ' --with-datasets')', which does the same." >&2
  if [ "$need_libstdcxx" -eq 1 ]; then
    echo "setup: on systems without apt, install libstdc++ from GCC 13 or newer." >&2
  fi
  if [ "$need_fmnist" -eq 1 ]; then
    echo "setup: the sample can instead read CIFAR-10 from a folder: --sample-args=\"--data DIR\"." >&2
  fi
  exit 1
fi

apt-get update -qq
if [ "$need_libstdcxx" -eq 1 ]; then
  if ! grep -rqs 'trixie' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    write_trixie_source > "$trixie_source"
    mkdir -p "$(dirname "$trixie_pin")"
    write_trixie_pin > "$trixie_pin"
    echo "setup: added $trixie_source (pinned low, used only on request)."
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie libstdc++6 >/dev/null
  locate_libstdcxx
  if ! libstdcxx_ok; then
    echo "setup: libstdc++6 from trixie installed, but $libstdcxx still lacks GLIBCXX_3.4.32." >&2
    exit 1
  fi
  echo "setup: installed libstdc++6 from Debian 13 (trixie): $libstdcxx provides GLIBCXX_3.4.32."
fi
if [ "$need_fmnist" -eq 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  if ! fmnist_ok; then
    echo "setup: dataset-fashion-mnist installed, but $fmnist has no test images." >&2
    exit 1
  fi
  echo "setup: installed Debian's dataset-fashion-mnist into $fmnist."
fi
