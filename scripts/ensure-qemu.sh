#!/usr/bin/env bash
# Installs what the end-to-end tests run when it is missing: QEMU (Debian package
# qemu-system-x86) and the guest agent (qemu-guest-agent: tests/src/guest.rs copies the host's
# qemu-ga into the test guest), and the tools the tests call: openssl (the TLS tests' keys and
# certificates), xz (the guest's kernel modules), setsid (the terminal tests). The guest's
# kernel and busybox are fetched by the tests themselves (apt-get download, cached in
# target/guest-cache).
set -euo pipefail
packages=()
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    packages+=(qemu-system-x86)
fi
if [ ! -x /usr/sbin/qemu-ga ]; then
    packages+=(qemu-guest-agent)
fi
for tool in openssl:openssl xz:xz-utils setsid:util-linux; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        packages+=("${tool#*:}")
    fi
done
if [ ${#packages[@]} = 0 ]; then
    exit 0
fi
echo "installing Debian packages: ${packages[*]}" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
qemu-system-x86_64 --version | head -n 1
