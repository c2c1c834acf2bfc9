#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or here: installs what the tests need if
# it is missing (mosquitto, nats-server, socat, libfaketime, a Python venv with pymodbus), then
# runs every test.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v socat >/dev/null || missing+=(socat)
# A three-node broker cluster for the failover test (tests/cluster.rs).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The chaos soak (tests/soak.rs) fakes a wall-clock step with it (LD_PRELOAD).
compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null || missing+=(libfaketime)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  # The mosquitto and nats-server packages would start system brokers on their default
  # ports; the tests start their own on free ports, so it does not matter either way.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pymodbus is the Modbus implementation nobody here wrote (interop tests). A venv keeps it
# off the system Python (Debian 12 refuses pip installs there).
venv=target/test-venv
if ! "$venv/bin/python3" -c 'import pymodbus, serial' 2>/dev/null; then
  echo "tests/run.sh: installing pymodbus into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pymodbus==3.16.1' 'pyserial==3.5'
fi
export PATH="$PWD/$venv/bin:$PATH"

cargo test --locked "$@"
