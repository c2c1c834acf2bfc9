#!/usr/bin/env bash
# ARM builds without Docker, with Debian 12's own Rust 1.85 and GNU cross linkers:
#   1. toolchain (packaging/cross-setup.sh, root, idempotent)
#   2. release binaries (packaged features: --no-default-features) for aarch64 and armv7
#   3. the test suite for aarch64 and for armv7 under qemu-user (tests that start the agent put
#      the runner in front of it: tests/support/bin.rs; mosquitto, python3, socat stay host
#      binaries)
#   4. the arm64 and armhf .debs (cargo deb --no-build) into $CARGO_TARGET_DIR/dist
#   5. stripped binary sizes (x86_64 too when $CARGO_TARGET_DIR/release/fieldlink exists)
#
# Env: CARGO_TARGET_DIR (default ./target), SKIP_QEMU_TESTS=1, QEMU_TEST_TARGETS (default both
# triples), QEMU_TEST_ARGS (passed to the
# test binaries after `--`, e.g. "--test-threads=1"), QEMU_SKIP (test-name substrings not run
# under qemu, see below).
#
# Tests that open a serial port (RTU over a pseudo-terminal) cannot run under Debian 12's
# qemu-user 7.2: the serialport crate sets the baud rate with the TCGETS2/TCSETS2 ioctls, which
# qemu-user 7.2 answers with ENOSYS (seen with `qemu-aarch64-static -strace`: ioctl 0x802c542a
# = -1 errno=38). Real ARM hardware is not affected; the x86_64 suite runs them.
# ARMv6 (Pi Zero/1, arm-unknown-linux-gnueabihf) is not buildable here: Debian ships no armv6
# Rust std. Use cross-rs with cross.toml for it (see the comments there).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
DIST=$CARGO_TARGET_DIR/dist
mkdir -p "$DIST"
# Times a step and keeps its exit status (also inside `||`, where `set -e` does not apply).
t() { local s=$SECONDS rc=0; "$@" || rc=$?; echo "cross-build: [$(( SECONDS - s ))s] $* (exit $rc)" >&2; return $rc; }

if [ "$(id -u)" = 0 ]; then t packaging/cross-setup.sh; fi

# Debian's toolchain, never rustup's: a bare `cargo` would silently use rustup's rustc, whose
# version does not match the extracted 1.85 target std.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
[ -x $CARGO ] && [ -x $RUSTC ] || { echo "cross-build: Debian's cargo/rustc missing: run packaging/cross-setup.sh as root" >&2; exit 1; }

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar

TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"

for tr in $TARGETS; do
    t $CARGO build --release --locked --no-default-features --target "$tr"
    # The binary must start under qemu: catches a wrong linker or a missing target std early.
    runner_var=CARGO_TARGET_$(echo "$tr" | tr a-z- A-Z_)_RUNNER
    # shellcheck disable=SC2086
    ${!runner_var} "$CARGO_TARGET_DIR/$tr/release/fieldlink" --help >/dev/null
done

if [ "${SKIP_QEMU_TESTS:-0}" != 1 ]; then
    # tests/run.sh keeps pymodbus (interop tests, a host program) in this venv.
    [ -d target/test-venv/bin ] && export PATH="$PWD/target/test-venv/bin:$PATH"
    # Deadlines in the tests are generous enough for qemu; the agent binary itself is started
    # through the target's CARGO_TARGET_<TRIPLE>_RUNNER by tests/support/bin.rs.
    # qemu-user 7.2 cannot set a serial port's baud rate (TCGETS2 -> ENOSYS), so whatever opens
    # a pty as a serial port is left out here (the x86_64 suite runs it): whole test files in
    # QEMU_SKIP_FILES (config_run: every test there has an RTU bus; soak, the chaos soak: its
    # RS-485 line and sensors are ptys, and its recovery and tail bounds are timings taken for
    # a native agent), single tests by name substring in QEMU_SKIP. `before_the_config`
    # (tests/signals.rs) waits until the program has blocked SIGHUP, read from
    # /proc/<pid>/status; under qemu-user that pid is qemu, which catches every signal itself
    # from its first instruction, so the test cannot tell when the guest took charge and its
    # SIGHUP lands on a guest that has not.
    skip_args=""
    for s in ${QEMU_SKIP-rtu pty hung_up before_the_config}; do skip_args="$skip_args --skip $s"; done
    skip_files=${QEMU_SKIP_FILES-serial_line config_run soak}
    test_args="--lib"
    for f in tests/*.rs; do
        name=$(basename "$f" .rs)
        case " $skip_files " in *" $name "*) continue ;; esac
        test_args="$test_args --test $name"
    done
    echo "cross-build: not under qemu (TCGETS2 unsupported by qemu-user): files $skip_files, tests matching$skip_args"
    # Every wait in the tests has a deadline, but a hang under emulation must still not eat
    # the CI budget: each emulated run gets QEMU_TEST_TIMEOUT seconds (default 25 min; the
    # suite takes about 8 under qemu here). Both targets run even when the first fails.
    status=0
    for tr in ${QEMU_TEST_TARGETS-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}; do
        # shellcheck disable=SC2086
        t timeout --kill-after=30 "${QEMU_TEST_TIMEOUT:-1500}" \
            $CARGO test --locked --no-fail-fast --target "$tr" $test_args -- $skip_args ${QEMU_TEST_ARGS:-} \
            || { status=$?; echo "cross-build: the $tr suite under qemu failed (exit $status)" >&2; }
        # The next target's debug build needs the room more than this one's does.
        rm -rf "${CARGO_TARGET_DIR:?}/$tr/debug"
    done
    [ "$status" = 0 ] || exit "$status"
fi

for tr in $TARGETS; do
    # Already stripped by [profile.release] strip = "symbols"; the host strip cannot read ARM.
    t cargo deb --no-build --no-strip --target "$tr" -o "$DIST/" >/dev/null
done
ls -1 "$DIST"/fieldlink_*_arm64.deb "$DIST"/fieldlink_*_armhf.deb

echo "stripped binary sizes (release, --no-default-features):"
size_of() { [ -f "$2" ] && printf '  %-8s %9d bytes  %s\n' "$1" "$(stat -c %s "$2")" "$(file -b "$2" | cut -d, -f1-2,5-)"; }
size_of x86_64 "$CARGO_TARGET_DIR/release/fieldlink" || echo "  x86_64   (not built: cargo build --release --no-default-features)"
size_of aarch64 "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/fieldlink"
size_of armv7 "$CARGO_TARGET_DIR/armv7-unknown-linux-gnueabihf/release/fieldlink"
