#!/usr/bin/env bash
# Packaging gate for CI (called by .ci/run after the test suite). Idempotent; installs what
# it needs (root on Debian 12). Steps, each timed:
#   setup      apt: lintian debootstrap systemd file; Debian Rust 1.85 + ARM cross toolchain
#              (packaging/cross-setup.sh); cargo-deb 3.8.0
#   unit       packaging/check-unit.sh (systemd-analyze security exposure <= 2.0, key settings)
#   deb-amd64  release build (Debian Rust 1.85, --no-default-features) + cargo deb
#   install    packaging/install-test.sh (Debian 12 chroot: install, upgrade, purge)
#   cross      packaging/cross-build.sh (aarch64 + armv7 release, aarch64 tests under qemu,
#              arm64 + armhf .debs, binary sizes)
#   lintian    every .deb: no errors (warnings listed)
# The .debs end up in $CARGO_TARGET_DIR/dist. Exit status 1 if any step failed.
# Env: CARGO_TARGET_DIR, SKIP_CROSS=1, SKIP_QEMU_TESTS=1, SKIP_INSTALL_TEST=1.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
DIST=$CARGO_TARGET_DIR/dist
CARGO_DEB_VERSION=3.8.0
LOG=$CARGO_TARGET_DIR/ci-packaging
mkdir -p "$DIST" "$LOG"
export PATH=$HOME/.cargo/bin:$PATH

declare -a names=() secs=() results=()
step() {
    local name=$1; shift
    local s=$SECONDS rc
    echo "=== ci-packaging: $name"
    "$@" 2>&1 | tee "$LOG/$name.log"
    rc=${PIPESTATUS[0]}
    names+=("$name"); secs+=($(( SECONDS - s ))); results+=("$([ "$rc" = 0 ] && echo PASS || echo "FAIL(rc=$rc)")")
    return 0
}

setup() {
    local need=""
    for pkg_cmd in lintian:lintian debootstrap:debootstrap systemd:systemd-analyze file:file; do
        command -v "${pkg_cmd#*:}" >/dev/null || need="$need ${pkg_cmd%%:*}"
    done
    if [ -n "$need" ]; then
        apt-get update -qq || true
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null || return 1
    fi
    packaging/cross-setup.sh || return 1
    if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked || return 1
    fi
    cargo deb --version
}

deb_amd64() {
    RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo build --release --locked --no-default-features || return 1
    rm -f "$DIST"/fieldlink_*_amd64.deb
    cargo deb --no-build --no-strip -o "$DIST/" || return 1
    printf 'x86_64 stripped binary: %d bytes\n' "$(stat -c %s "$CARGO_TARGET_DIR/release/fieldlink")"
}

lintian_all() {
    local rc=0 deb out
    for deb in "$DIST"/fieldlink_*.deb; do
        # --fail-on error: warnings are listed but do not fail the gate.
        out=$(lintian --fail-on error "$deb" 2>&1 | grep -v 'running with root privileges'); [ "${PIPESTATUS[0]}" = 0 ] || rc=1
        echo "$(basename "$deb"): $(printf '%s\n' "$out" | grep -c '^E:') error(s), $(printf '%s\n' "$out" | grep -c '^W:') warning(s)"
        [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
    done
    return $rc
}

total_start=$SECONDS
step setup setup
step unit packaging/check-unit.sh
step deb-amd64 deb_amd64
if [ "${SKIP_INSTALL_TEST:-0}" != 1 ]; then step install packaging/install-test.sh "$(ls -t "$DIST"/fieldlink_*_amd64.deb | head -1)"; fi
if [ "${SKIP_CROSS:-0}" != 1 ]; then step cross packaging/cross-build.sh; fi
step lintian lintian_all

echo
echo "=== ci-packaging summary (logs in $LOG)"
failed=0
for i in "${!names[@]}"; do
    printf '  %-10s %-12s %5ss\n' "${names[$i]}" "${results[$i]}" "${secs[$i]}"
    [ "${results[$i]}" = PASS ] || failed=1
done
printf '  %-10s %-12s %5ss\n' total "" "$(( SECONDS - total_start ))"
ls -1 "$DIST"/*.deb 2>/dev/null | sed 's/^/  /'
exit $failed
