#!/usr/bin/env bash
# The whole test suite, in two pytest processes. The OpenVINO/NNCF tests (tests/test_deploy.py) run in an
# interpreter of their own: run in one process after the rest of the suite, on this project's machines, the
# interpreter crashed with SIGSEGV inside that module (native code: OpenVINO, ONNX Runtime and PyTorch side by
# side; not reproduced when the module runs alone or after any few other modules). Extra arguments go to both.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pytest --ignore=tests/test_deploy.py "$@"
.venv/bin/pytest tests/test_deploy.py "$@"
