#!/bin/sh
# Installs everything spa's demo and test suite need on a fresh Debian machine
# (run as root): system tools from apt, then spa itself with its pinned
# dependencies into ./.venv. Safe to run again; it only adds what is missing.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="python3 python3-venv iproute2 nftables libnftables1 iptables ipset procps iputils-ping dnsutils knockd systemd coturn openssh-server openssh-client openssl shellcheck busybox unbound tcpdump fwknop-server fwknop-client nmap faketime gcc libc6-dev"

missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'

# The benchmarks' junk sender (tests/bench/junk.c), built where git ignores it;
# rebuilt every time (well under a second), so it always matches its source.
mkdir -p build
gcc -O2 -Wall -o build/junk tests/bench/junk.c
