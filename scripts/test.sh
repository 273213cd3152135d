#!/usr/bin/env bash
# Set up a test environment from scratch and run the test suite. This is the one place
# that says how the tests run: the README prints `bash scripts/test.sh`, .ci/run calls it,
# tox.ini calls it with --no-setup.
#
#   bash scripts/test.sh                  apt packages (only if missing), ./.venv, install with
#                                         the torch pin, reference packages, npe2 validate, pytest
#   bash scripts/test.sh --no-setup       only pytest, with the `python` on PATH (tox uses this)
#   bash scripts/test.sh -k packaging     arguments after the options go to pytest
#
# Needs python3 (3.10+), pip and, on Debian/Ubuntu, apt. Runs without stdin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The torch pin lives in install commands, not in pyproject.toml: an unpinned torch in the
# resolution pulls a multi-GB CUDA build. Keep README.md and tox.ini in step
# (tests/test_packaging.py checks).
TORCH_PIN="torch==2.13.0"
# Qt's xcb platform needs the two libxcb libraries; napari needs a real X server (Xvfb)
# because QT_QPA_PLATFORM=offscreen gives vispy no OpenGL context.
APT_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1)
XVFB_ARGS=(-a -s "-screen 0 1280x1024x24")

setup=1
if [[ "${1:-}" == "--no-setup" ]]; then
    setup=0
    shift
fi

log() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

install_apt_packages() {
    local missing=() pkg
    if ! command -v dpkg-query >/dev/null; then
        # Not Debian-like: only check for the X server wrapper and let the user install it.
        command -v xvfb-run >/dev/null && return 0
        echo "error: xvfb-run not found; install Xvfb (and xauth) with your package manager" >&2
        return 1
    fi
    for pkg in "${APT_PACKAGES[@]}"; do
        # `dpkg -s` exits 0 for removed packages that left config files; check the status.
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    # Debian's system python3 needs python3-venv for `python3 -m venv`.
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages already installed: ${APT_PACKAGES[*]}"
        return 0
    fi
    # Name only what is missing: naming installed Mesa/X packages makes apt upgrade them.
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
}

setup_venv() {
    if [[ ! -x .venv/bin/python ]]; then
        log "python3 -m venv .venv"
        python3 -m venv .venv
    fi
    # One pip command, so the torch pin holds while the extras resolve.
    log "pip install \"$TORCH_PIN\" -e \".[testing]\""
    .venv/bin/python -m pip install --no-input "$TORCH_PIN" -e ".[testing]"
    # Reference implementations for comparison tests: code only, and their declared
    # dependencies (torchvision, timm) would replace the pinned torch.
    log "pip install --no-deps segment-anything mobilesam-mirror"
    .venv/bin/python -m pip install --no-input --no-deps segment-anything mobilesam-mirror
    # micro-sam and torch-em (automatic segmentation parity, tests/automatic): code only, plus
    # the few libraries they import at module level (none of them declares torch).
    log "pip install --no-deps micro_sam==1.8.14 torch_em==0.10.9 (+ bioimage-cpp python-elf xxhash kornia)"
    .venv/bin/python -m pip install --no-input --no-deps micro_sam==1.8.14 torch_em==0.10.9 \
        bioimage_cpp==0.10.0 python-elf==0.9.2 xxhash kornia==0.8.1 kornia_rs
    .venv/bin/python -m pip install --no-input matplotlib
    # SAM 2.1 reference (sam2 1.1.0 = Meta's repository at 2b90b9f): a source package
    # whose CUDA extension is optional; built without it and without build isolation
    # so that its build requirements do not fetch a second torch.
    log "pip install --no-deps sam2==1.1.0 and its config stack"
    # (Python 3.12+ venvs come without setuptools, which the build needs.)
    .venv/bin/python -m pip install --no-input setuptools
    SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install --no-input --no-deps --no-build-isolation sam2==1.1.0
    .venv/bin/python -m pip install --no-input --no-deps hydra-core "omegaconf<2.4" \
        antlr4-python3-runtime==4.9.3 iopath portalocker
    export PATH="$PWD/.venv/bin:$PATH"
}

run_tests() {
    log "npe2 validate napari-samscope"
    python -m npe2 validate napari-samscope

    # Qt wants a private runtime dir; offscreen together with Xvfb draws a black canvas.
    local rc=0
    RUNTIME_DIR="$(mktemp -d)"
    chmod 700 "$RUNTIME_DIR"
    trap 'rm -rf "$RUNTIME_DIR"' EXIT
    log "xvfb-run ${XVFB_ARGS[*]@Q} python -m pytest $*"
    env -u QT_QPA_PLATFORM XDG_RUNTIME_DIR="$RUNTIME_DIR" \
        xvfb-run "${XVFB_ARGS[@]}" python -m pytest "$@" </dev/null || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "error: pytest collected no tests (exit code 5); treating that as a failure" >&2
    elif [[ $rc -ne 0 ]]; then
        echo "error: pytest failed with exit code $rc" >&2
    fi
    return "$rc"
}

if [[ $setup -eq 1 ]]; then
    install_apt_packages
    setup_venv
fi
run_tests "$@"
