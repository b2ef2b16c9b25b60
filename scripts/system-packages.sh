#!/usr/bin/env bash
# The system packages the tests need besides PostgreSQL: pgbouncer (tests/distributed/
# test_pgbouncer.py), iptables (the partition tests) and chromium (tests/dashboard's browser
# tests drive Debian's build with Playwright; never a browser Playwright downloads). Idempotent, and quick when both are
# installed; a failed install fails loudly. Debian/Ubuntu (apt-get).
set -euo pipefail
# Debian puts both in /usr/sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

have_all() { command -v pgbouncer >/dev/null && command -v iptables >/dev/null \
  && [ -x /usr/bin/chromium ]; }
if have_all; then
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo -n)
fi
# The system service's processes: those run with the package's config in /etc/pgbouncer.
running_pgbouncers() { { pgrep -a -x pgbouncer || true; } | awk '/\/etc\/pgbouncer\//{print $1}' | sort; }

before="$(running_pgbouncers)"
echo "==> installing pgbouncer, iptables and chromium (apt-get)"
if ! "${SUDO[@]}" apt-get update -q \
   || ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q pgbouncer iptables chromium; then
  echo "FATAL: could not install pgbouncer, iptables and chromium; the tests need them." >&2
  exit 1
fi
if ! have_all; then
  echo "FATAL: pgbouncer, iptables or chromium still missing after the install." >&2
  exit 1
fi

# The package may start its system service (on 127.0.0.1:6432). The tests start their own
# PgBouncers; stop only the service this install started, by PID, never one that ran before.
started="$(comm -13 <(echo "$before") <(running_pgbouncers) | grep . || true)"
for pid in $started; do
  echo "==> stopping the pgbouncer service the install started (PID $pid)"
  "${SUDO[@]}" kill -TERM "$pid" || true
done
for pid in $started; do
  for _ in $(seq 1 50); do ps -p "$pid" >/dev/null || break; sleep 0.1; done
  if ps -p "$pid" >/dev/null; then
    echo "FATAL: the pgbouncer the install started (PID $pid) did not stop." >&2
    exit 1
  fi
done
