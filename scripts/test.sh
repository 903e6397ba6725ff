#!/usr/bin/env bash
# The test command: `bash scripts/test.sh [pytest args...]`.
#
# Sets up everything it needs on a fresh machine (Python 3.11 and Node 20 assumed), then
# checks protos (buf format, lint, breaking), regenerates code and fails if it was stale,
# lints and type-checks Python and TypeScript, and runs the TypeScript and Python tests.
# Set-up steps are skipped when nothing they depend on changed, so reruns are fast.
#
# Environment:
#   LEDGERFLOW_BREAKING_AGAINST  buf input to check the working tree's protos against (e.g.
#                                '.git#branch=origin/main'); default: main's history, see below.
#   LEDGERFLOW_PG_BINDIR         PostgreSQL server binaries (initdb, pg_ctl); detected when
#                                unset, installed with apt-get when missing. Exported for tests.
#   LEDGERFLOW_CHROMIUM          Chromium for the browser tests (default /usr/bin/chromium,
#                                Debian's package, installed with apt-get when missing).
#   PYTHON                       interpreter used to create .venv (default: python3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

stage_no=0
stage() {
  stage_no=$((stage_no + 1))
  printf '\n==> [%d] %s\n' "$stage_no" "$*"
}
die() {
  printf '\nscripts/test.sh: %s\n' "$*" >&2
  exit 1
}
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- Python environment -------------------------------------------------------------------
stage "Python environment (.venv)"
if [[ ! -x .venv/bin/python ]]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  [[ -n $python ]] || die "no python3.11 found (set PYTHON=/path/to/python3.11)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is older than 3.11"
  "$python" -m venv .venv
fi
# Reinstall only when pyproject.toml changed; the stamp lives in .venv so a new venv reinstalls.
py_stamp=.venv/.ledgerflow-install.sha256
py_want=$(hash_of pyproject.toml)
if [[ ! -f $py_stamp || $(<"$py_stamp") != "$py_want" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[coordinator,dev]'
  echo "$py_want" >"$py_stamp"
else
  echo "up to date"
fi
export VIRTUAL_ENV=$root/.venv
export PATH="$VIRTUAL_ENV/bin:$PATH"

# --- Node environment ---------------------------------------------------------------------
stage "Node environment (sdk/typescript/node_modules)"
node_stamp=sdk/typescript/node_modules/.ledgerflow-lock.sha256
node_want=$(hash_of sdk/typescript/package.json sdk/typescript/package-lock.json)
if [[ ! -f $node_stamp || $(<"$node_stamp") != "$node_want" ]]; then
  # --ignore-scripts: buf and esbuild work from their platform packages without their
  # postinstall scripts, and nothing else needs one.
  (cd sdk/typescript && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$node_want" >"$node_stamp"
else
  echo "up to date"
fi
buf=$root/sdk/typescript/node_modules/.bin/buf

# --- PostgreSQL server binaries -----------------------------------------------------------
stage "PostgreSQL server binaries"
find_pg_bindir() {
  local dir
  for dir in "${LEDGERFLOW_PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" \
    $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}
if ! pg_bindir=$(find_pg_bindir); then
  echo "initdb not found; installing Debian's postgresql"
  sudo=()
  if ((EUID != 0)); then sudo=(sudo -n); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
  pg_bindir=$(find_pg_bindir) || die "postgresql installed but initdb still not found"
fi
export LEDGERFLOW_PG_BINDIR=$pg_bindir
echo "LEDGERFLOW_PG_BINDIR=$LEDGERFLOW_PG_BINDIR ($("$pg_bindir/postgres" --version))"

# --- Chromium (browser tests) -------------------------------------------------------------
stage "Chromium for the browser tests"
# tests/web drive Debian's chromium through Playwright's executable_path; Playwright's own
# browser download (`playwright install`) is never used.
chromium=${LEDGERFLOW_CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
  echo "$chromium not found; installing Debian's chromium"
  sudo=()
  if ((EUID != 0)); then sudo=(sudo -n); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
  [[ -x $chromium ]] || die "chromium installed but $chromium still not found"
fi
export LEDGERFLOW_CHROMIUM=$chromium
# Debian's wrapper script prints a harmless shell warning on stderr; keep the version line.
echo "LEDGERFLOW_CHROMIUM=$LEDGERFLOW_CHROMIUM ($("$chromium" --version 2>/dev/null))"

# --- Protos -------------------------------------------------------------------------------
stage "buf format"
"$buf" format -d --exit-code || die "protos are not formatted: run '$buf format -w'"

stage "buf lint"
"$buf" lint

stage "buf breaking"
# Contracts only grow: no commit may break what its parent published. Work lands straight on
# main, so "against main" means every commit in main's history that touched proto/ is checked
# against its parent (a CI clone of main has no older main to compare with), and uncommitted
# proto changes against HEAD. A commit whose message says [proto-breaking] is a deliberate,
# reviewed break and is not checked. LEDGERFLOW_BREAKING_AGAINST=<buf input> checks the working
# tree against that input instead (e.g. '.git#branch=origin/main' on a feature branch).
if [[ -n ${LEDGERFLOW_BREAKING_AGAINST:-} ]]; then
  echo "working tree against $LEDGERFLOW_BREAKING_AGAINST"
  "$buf" breaking --against "$LEDGERFLOW_BREAKING_AGAINST"
elif git rev-parse -q --verify HEAD >/dev/null 2>&1; then
  checked=0
  history=$(($(git rev-list --count HEAD) + 1))
  while read -r commit; do
    if ! git rev-parse -q --verify "$commit^" >/dev/null 2>&1; then
      continue # the root commit, or the edge of a shallow clone
    fi
    if git log -1 --format=%B "$commit" | grep -q '\[proto-breaking\]'; then
      echo "skipped ${commit:0:12} (marked [proto-breaking])"
      continue
    fi
    if ! git cat-file -e "$commit^:proto" 2>/dev/null; then
      continue # the parent had no contracts yet
    fi
    # buf clones a git input 50 commits deep unless told: old commits need the whole history.
    "$buf" breaking ".git#ref=$commit,depth=$history" --against ".git#ref=$commit^,depth=$history" ||
      die "commit ${commit:0:12} breaks the contracts of its parent"
    checked=$((checked + 1))
  done < <(git rev-list --first-parent --max-count=50 HEAD -- proto)
  if git cat-file -e HEAD:proto 2>/dev/null; then
    "$buf" breaking --against ".git#ref=HEAD" ||
      die "uncommitted proto changes break the contracts of HEAD"
    checked=$((checked + 1))
  fi
  echo "checked $checked revision(s)"
else
  echo "skipped: no commit yet"
fi

# --- Generated code -----------------------------------------------------------------------
stage "generate code (fails if the generated code was stale)"
gen_dirs=(sdk/python/gen sdk/typescript/src/gen)
snapshot() {
  { find "${gen_dirs[@]}" -type f -print0 2>/dev/null || true; } | LC_ALL=C sort -z |
    xargs -0r sha256sum
}
before=$(snapshot)
bash scripts/generate.sh
after=$(snapshot)
if [[ $before != "$after" ]]; then
  echo "changed by regeneration:" >&2
  diff <(echo "$before") <(echo "$after") | sed -n 's/^[<>] [0-9a-f]*  /  /p' | sort -u >&2
  die "generated code was stale: run 'bash scripts/generate.sh' and commit the result"
fi
# The tree on disk matches the protos; in CI it must also be what was committed.
if [[ ${CI:-} == true ]] && git rev-parse -q --verify HEAD >/dev/null 2>&1; then
  changed=$(git status --porcelain -- "${gen_dirs[@]}")
  if [[ -n $changed ]]; then
    echo "$changed" >&2
    die "committed generated code differs: run 'bash scripts/generate.sh' and commit the result"
  fi
fi
echo "up to date"

# --- Python lint and types ----------------------------------------------------------------
stage "ruff check"
ruff check .

stage "ruff format --check"
ruff format --check .

stage "mypy (strict)"
# mypy rejects a `files` entry holding no Python file (and git keeps no empty directory), so
# roots that have no code yet are left out; the list itself lives in pyproject.toml.
mapfile -t mypy_targets < <(python - <<'EOF'
import pathlib
import tomllib

files = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["mypy"]["files"]
for entry in files:
    path = pathlib.Path(entry)
    if path.is_file() or any(path.rglob("*.py")) or any(path.rglob("*.pyi")):
        print(entry)
EOF
)
mypy "${mypy_targets[@]}"

# --- TypeScript ---------------------------------------------------------------------------
stage "tsc --noEmit"
sdk/typescript/node_modules/.bin/tsc --noEmit -p sdk/typescript

stage "TypeScript tests (node --test)"
# Node 20's test runner takes no glob patterns: list the files here.
mapfile -t ts_tests < <(cd sdk/typescript && find test -name '*.test.ts' | LC_ALL=C sort)
((${#ts_tests[@]})) || die "no TypeScript tests found in sdk/typescript/test"
(cd sdk/typescript && node --import tsx --test "${ts_tests[@]}")

# --- Python tests -------------------------------------------------------------------------
stage "pytest"
python -m pytest "$@"
