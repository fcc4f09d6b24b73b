#!/usr/bin/env bash
# The test command (README and CI): installs what the tests need on a fresh machine, lints, then runs pytest with
# any arguments given, e.g. `bash tests/run.sh -m "not slow and not browser"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
python3 -m pip install -q -r requirements-test.txt
# the browser tests drive Debian's chromium (Playwright's own browser download does not work here); g++ builds our
# CPU kernel
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: install ${missing[*]} (Debian: sudo apt-get install -y ${missing[*]}), then run again" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
ruff check .
# the CPU kernel's status, once, so the log shows which path the tests run (they check it built on AVX2 machines)
python3 -c "from specviz.backends.kernels import kernel; print('packed linear kernel:', kernel()[1])"
set +e
python3 -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
