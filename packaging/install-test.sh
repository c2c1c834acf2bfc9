#!/usr/bin/env bash
# Chroot install test of the amd64 .deb in a clean Debian 12 root.
#
#   packaging/install-test.sh [DEB] [UPGRADE_DEB]
#
# DEB defaults to the newest fieldlink_*_amd64.deb in $CARGO_TARGET_DIR/dist (where
# ci-packaging.sh puts them) or $CARGO_TARGET_DIR/debian; UPGRADE_DEB, when not given, is DEB re-labelled with a higher version
# (cargo deb --no-build --deb-version), i.e. the same payload as a newer release.
# Needs root (debootstrap, chroot, mount). The pristine root (minbase + systemd, ~100 MB)
# is cached as a tarball under $FIELDLINK_ROOT_CACHE (default /var/cache/fieldlink-install-test)
# so re-runs skip debootstrap; delete it to refresh.
# Prints one PASS/FAIL line per check; exit status 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
CACHE=${FIELDLINK_ROOT_CACHE:-/var/cache/fieldlink-install-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# systemd: systemd-sysusers and `systemd-analyze verify` inside the root; man-db: verify runs
# `man fieldlink` for the unit's Documentation=man:fieldlink(1); procps: /bin/kill, the unit's
# ExecReload= (the package depends on it; verify checks that it exists).
INCLUDE=systemd,init-system-helpers,man-db,procps
ROOT_TAR=$CACHE/$SUITE-minbase-$(echo "$INCLUDE" | tr , -).tar

[ "$(id -u)" = 0 ] || { echo "FAIL: install-test needs root (debootstrap, chroot)"; exit 1; }

fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@" >/tmp/fieldlink-install-check.$$ 2>&1; then pass "$what"; else fail "$what"; sed 's/^/    /' /tmp/fieldlink-install-check.$$; fi; rm -f /tmp/fieldlink-install-check.$$; }
step_time() { echo "  [$(( SECONDS - $1 ))s] $2"; }

deb=${1:-$(ls -t "$CARGO_TARGET_DIR"/dist/fieldlink_*_amd64.deb "$CARGO_TARGET_DIR"/debian/fieldlink_*_amd64.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "FAIL: no amd64 .deb found (build it with: cargo deb --no-default-features)"; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
root=""
work=""
cleanup() {
    if [ -n "$root" ] && [ -d "$root" ]; then
        for m in proc dev; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
        rm -rf --one-file-system "$root"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# cargo-deb deletes other versions of the package from target/debian whenever it runs:
# work on copies.
work=$(mktemp -d /var/tmp/fieldlink-install-debs.XXXXXX)
cp "$deb" "$work/" && deb=$work/$(basename "$deb")
upgrade_deb=${2:-}
if [ -z "$upgrade_deb" ]; then
    upgrade_version="${version%-*}+upgradetest1-1"
    upgrade_deb=$work/fieldlink_${upgrade_version}_amd64.deb
    # Same payload, newer version: enough to exercise dpkg's conffile handling on upgrade.
    cargo deb --no-build --no-strip --no-default-features --deb-version "$upgrade_version" -o "$upgrade_deb" >/dev/null \
        || { echo "FAIL: could not build the upgrade .deb"; exit 1; }
fi
echo "install-test: $deb -> upgrade $(basename "$upgrade_deb")"

# 1. A pristine Debian 12 root, cached.
if [ ! -s "$ROOT_TAR" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    t=$SECONDS
    build=$(mktemp -d /var/tmp/fieldlink-debootstrap.XXXXXX)
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$build" "$MIRROR" >"$build.log" 2>&1; then
        tail -20 "$build.log"; rm -rf "$build"; echo "FAIL: debootstrap $SUITE"; exit 1
    fi
    mkdir -p "$CACHE"
    tar -C "$build" -cf "$ROOT_TAR.tmp" . && mv "$ROOT_TAR.tmp" "$ROOT_TAR"
    rm -rf "$build" "$build.log"
    step_time $t "debootstrap $SUITE minbase + $INCLUDE (cached in $ROOT_TAR)"
fi

t=$SECONDS
root=$(mktemp -d /var/tmp/fieldlink-root.XXXXXX)
tar -C "$root" -xf "$ROOT_TAR"
chmod 755 "$root"   # mktemp made it 0700: the service user could not reach /usr/bin
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
step_time $t "fresh root unpacked"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# 2. Install.
cp "$deb" "$root/tmp/fieldlink.deb"
cp "$upgrade_deb" "$root/tmp/fieldlink-upgrade.deb"
check "dpkg -i $(basename "$deb") (no systemd as PID 1)" in_root dpkg -i /tmp/fieldlink.deb </dev/null
check "package state is installed" sh -c "chroot '$root' dpkg-query -W -f='\${Status}' fieldlink | grep -qx 'install ok installed'"

for f in /usr/bin/fieldlink /etc/fieldlink/fieldlink.toml /usr/lib/systemd/system/fieldlink.service \
         /usr/lib/sysusers.d/fieldlink.conf /usr/share/man/man1/fieldlink.1.gz \
         /usr/share/doc/fieldlink/copyright /usr/share/doc/fieldlink/changelog.Debian.gz; do
    check "file $f" test -s "$root$f"
done
check "profiles under /usr/share/fieldlink/profiles" sh -c "ls '$root'/usr/share/fieldlink/profiles/*.toml"
check "examples under /usr/share/fieldlink/examples" sh -c "ls '$root'/usr/share/fieldlink/examples/*.toml"
check "/etc/fieldlink/fieldlink.toml is a conffile" sh -c "grep -qx /etc/fieldlink/fieldlink.toml '$root'/var/lib/dpkg/info/fieldlink.conffiles"
check "unit enabled (multi-user.target.wants symlink)" test -L "$root/etc/systemd/system/multi-user.target.wants/fieldlink.service"

# 3. The user.
check "system user fieldlink exists" in_root getent passwd fieldlink
check "fieldlink is a system uid (< 1000)" sh -c "[ \$(chroot '$root' id -u fieldlink) -lt 1000 ]"
check "fieldlink is in group dialout" sh -c "chroot '$root' id -nG fieldlink | tr ' ' '\n' | grep -qx dialout"
check "fieldlink has no login shell" sh -c "chroot '$root' getent passwd fieldlink | grep -q ':/usr/sbin/nologin$'"

# 4. The binary runs inside, as the service user, on the shipped config.
check "fieldlink check --config /etc/fieldlink/fieldlink.toml (as user fieldlink)" \
    in_root runuser -u fieldlink -- /usr/bin/fieldlink check --config /etc/fieldlink/fieldlink.toml

# 5. systemd-analyze verify prints nothing (it warns with exit 0, so any output fails).
verify_out=$(in_root systemd-analyze verify /usr/lib/systemd/system/fieldlink.service 2>&1)
verify_rc=$?
if [ $verify_rc -eq 0 ] && [ -z "$verify_out" ]; then pass "systemd-analyze verify fieldlink.service: silent"
else fail "systemd-analyze verify fieldlink.service (rc=$verify_rc):"; printf '%s\n' "$verify_out" | sed 's/^/    /'; fi

# 6. Upgrade keeps an edited conffile (and state).
echo '# edited by install-test' >> "$root/etc/fieldlink/fieldlink.toml"
mkdir -p "$root/var/lib/fieldlink" && echo state > "$root/var/lib/fieldlink/install-test-state"
before=$(sha256sum < "$root/etc/fieldlink/fieldlink.toml")
check "dpkg -i upgrade to $(dpkg-deb -f "$upgrade_deb" Version)" in_root dpkg -i /tmp/fieldlink-upgrade.deb </dev/null
check "upgraded version installed" sh -c "[ \"\$(chroot '$root' dpkg-query -W -f='\${Version}' fieldlink)\" = '$(dpkg-deb -f "$upgrade_deb" Version)' ]"
check "edited conffile survived the upgrade" sh -c "[ \"\$(sha256sum < '$root/etc/fieldlink/fieldlink.toml')\" = '$before' ]"
check "state survived the upgrade" test -f "$root/var/lib/fieldlink/install-test-state"
check "user still in dialout after upgrade" sh -c "chroot '$root' id -nG fieldlink | tr ' ' '\n' | grep -qx dialout"

# 7. Remove keeps config, purge removes config and state.
check "dpkg --remove" in_root dpkg --remove fieldlink
check "config kept after remove" test -f "$root/etc/fieldlink/fieldlink.toml"
check "dpkg --purge" in_root dpkg --purge fieldlink
check "purge removed /etc/fieldlink" test ! -e "$root/etc/fieldlink"
check "purge removed /var/lib/fieldlink" test ! -e "$root/var/lib/fieldlink"
check "purge removed the enablement symlink" test ! -e "$root/etc/systemd/system/multi-user.target.wants/fieldlink.service"
check "binary gone" test ! -e "$root/usr/bin/fieldlink"

if [ $fails -eq 0 ]; then echo "PASS: install-test ($((SECONDS))s)"; exit 0; fi
echo "FAIL: install-test, $fails check(s) failed"
exit 1
