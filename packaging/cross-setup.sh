#!/usr/bin/env bash
# Installs the ARM cross toolchain on a Debian 12 (bookworm) x86_64 host. Root, idempotent.
# Debian's packaged Rust 1.85 (rustc-web, held: bookworm-security carries newer ones whose
# std would not match), the arm64/armhf target std (extracted from libstd-rust-web-dev:<arch>,
# which apt cannot co-install here), GNU cross linkers and qemu-user-static.
# Logic from the verified recipe shared/cross/setup-debian-cross.sh (~25 s on first run).
set -euo pipefail
RUSTV=1.85.0+dfsg3-1~deb12u3
DEBARCHES=${DEBARCHES:-"arm64 armhf"}
triple() { case $1 in arm64) echo aarch64-unknown-linux-gnu;; armhf) echo armv7-unknown-linux-gnueabihf;; esac; }
gnu()    { case $1 in arm64) echo aarch64-linux-gnu;;         armhf) echo arm-linux-gnueabihf;; esac; }

[ "$(id -u)" = 0 ] || { echo "cross-setup: needs root" >&2; exit 1; }

ready=1
[ "$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null)" = "$RUSTV" ] || ready=0
command -v qemu-aarch64-static >/dev/null || ready=0
for a in $DEBARCHES; do
  command -v "$(gnu "$a")-gcc" >/dev/null || ready=0
  [ "$(cat "/usr/lib/rustlib/$(triple "$a")/.debian-version" 2>/dev/null)" = "$RUSTV" ] || ready=0
done
if [ $ready = 1 ]; then echo "cross-setup: toolchain already in place (rustc $RUSTV)"; exit 0; fi

for a in $DEBARCHES; do dpkg --print-foreign-architectures | grep -qx "$a" || dpkg --add-architecture "$a"; done
# bookworm-security/armhf may fail with "Mirror sync in progress?": main is enough.
apt-get update -qq || echo "cross-setup: WARN: some apt indexes failed (ok if only *-security armhf)" >&2
pkgs="rustc-web=$RUSTV cargo-web=$RUSTV libstd-rust-web-dev=$RUSTV libstd-rust-web-1.85=$RUSTV qemu-user-static pkg-config"
for a in $DEBARCHES; do pkgs="$pkgs gcc-$(gnu "$a") libc6-dev-$a-cross"; done
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends --allow-change-held-packages $pkgs >/dev/null
apt-mark hold rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-1.85 >/dev/null
for a in $DEBARCHES; do
  tr=$(triple "$a"); stamp=/usr/lib/rustlib/$tr/.debian-version
  if [ "$(cat "$stamp" 2>/dev/null)" != "$RUSTV" ]; then
    tmp=$(mktemp -d); chown _apt "$tmp" 2>/dev/null || chmod 777 "$tmp"
    (cd "$tmp" && apt-get download -qq "libstd-rust-web-dev:$a=$RUSTV")
    rm -rf "/usr/lib/rustlib/$tr"; dpkg -x "$tmp"/libstd-rust-web-dev_*_"$a".deb /
    echo "$RUSTV" > "$stamp"; rm -rf "$tmp"
  fi
done
echo "cross-setup: done (rustc $(/usr/bin/rustc --version))"
