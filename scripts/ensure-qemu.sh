#!/usr/bin/env bash
# Installs QEMU (Debian package qemu-system-x86) when qemu-system-x86_64 is missing.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    exit 0
fi
echo "qemu-system-x86_64 not found: installing Debian package qemu-system-x86" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -n 1
