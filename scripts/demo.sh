#!/usr/bin/env bash
# The demo: `bash scripts/demo.sh` on a fresh machine (Python 3.11 assumed).
#
# Creates .venv and installs ledgerflow into it (as scripts/test.sh does, sharing its
# install stamp), starts `ledgerflow dev` (a coordinator on a throwaway SQLite file plus a
# worker serving examples/), and runs the order saga example watched live to completion.
# Then the same order with `--fail-at ship`, to show its compensations run in reverse.
# Everything stops at the end; the exit status is the first run's (0: it completed).
#
# Environment:
#   PYTHON   interpreter used to create .venv (default: python3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

say() { printf '\n==> %s\n' "$*"; }
die() {
  printf '\nscripts/demo.sh: %s\n' "$*" >&2
  exit 2
}

say "Python environment (.venv)"
if [[ ! -x .venv/bin/python ]]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  [[ -n $python ]] || die "no python3.11 found (set PYTHON=/path/to/python3.11)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is older than 3.11"
  "$python" -m venv .venv
fi
py_stamp=.venv/.ledgerflow-install.sha256
py_want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $py_stamp || $(<"$py_stamp") != "$py_want" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[coordinator,dev]'
  echo "$py_want" >"$py_stamp"
else
  echo "up to date"
fi
export PATH="$root/.venv/bin:$PATH"

say "ledgerflow dev (coordinator + worker for examples/)"
state=$(mktemp -d "${TMPDIR:-/tmp}/ledgerflow-demo.XXXXXX")
dev_pid=""
cleanup() {
  if [[ -n $dev_pid ]] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid"
    wait "$dev_pid" || true
  fi
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Free ports: the demo never collides with a `ledgerflow dev` you already run.
ledgerflow dev --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --db "$state/dev.db" \
  >"$state/banner" 2>"$state/dev.log" &
dev_pid=$!
for _ in $(seq 600); do
  grep -q '^  stop' "$state/banner" 2>/dev/null && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$state/dev.log" >&2; die "ledgerflow dev did not start"; }
  sleep 0.05
done
grep -q '^  stop' "$state/banner" || die "ledgerflow dev was not ready within 30 s"
grep -v '^  \(try\|  \|stop\)' "$state/banner"
address=$(awk '$1 == "coordinator" {print $2}' "$state/banner")

say "The order saga, live: reserve inventory -> charge card -> ship"
status=0
python -m examples.order_saga --address "$address" || status=$?

say "The same order failing at 'ship': the completed steps are compensated, last first"
python -m examples.order_saga --address "$address" --fail-at ship || true

say "Done"
cat <<TEXT
The first run exited $status (0: completed). To keep a dev server running:

  source .venv/bin/activate
  ledgerflow dev                                   # then, in another terminal:
  python -m examples.order_saga --fail-at ship
  ledgerflow run list
TEXT
exit "$status"
