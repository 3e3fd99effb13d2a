#!/usr/bin/env bash
# One source of truth for facealign's environment: `make setup` runs it on a
# workstation or CI machine, docker/Dockerfile runs it in the CUDA image.
#
#   FACEALIGN_VENV    where the virtualenv goes (default: .venv beside this file;
#                     set to "system" to install into the current interpreter, as docker/ does)
#   FACEALIGN_MXNET   the MXNet wheel: mxnet (CPU, default) or mxnet-cu112 (GPU); or "preinstalled":
#                     use the interpreter's own MXNet 1.9.1 and Horovod 0.28 (NVIDIA's MXNet container,
#                     docker/Dockerfile.ngc), checked, never pip-installed over, and install only the rest
#   FACEALIGN_PYTHON  the interpreter that creates the venv (default: python3)
#   FACEALIGN_SETUP_PLAN=1  print the build decisions (wheel, Horovod's MPI / NCCL / Gloo) and exit:
#                     how tests check the GPU branch on machines without CUDA
#
# Idempotent: a stamp keyed on this script, pyproject.toml, native/ and the
# chosen wheel makes a second run a no-op that finishes in about a second.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

MXNET_DIST="${FACEALIGN_MXNET:-mxnet}"
MXNET_VERSION="1.9.1"
HOROVOD_VERSION="0.28.1"
PYTHON="${FACEALIGN_PYTHON:-python3}"
VENV="${FACEALIGN_VENV:-$here/.venv}"

case "$MXNET_DIST" in
  mxnet|mxnet-cu112|mxnet-cu110|mxnet-cu102|mxnet-cu117|preinstalled) ;;
  *) echo "install.sh: FACEALIGN_MXNET=$MXNET_DIST is not one of mxnet, mxnet-cu112 (or cu102/cu110/cu117), preinstalled" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*"; }

# Horovod's build flags for this machine: Gloo always; MPI where an MPI compiler is present (docker/
# has OpenMPI); NCCL with a CUDA wheel and a visible NCCL (docker/ sets HOROVOD_NCCL_HOME or ships libnccl).
horovod_flags() {
  echo HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1
  if command -v mpicxx >/dev/null 2>&1 || command -v mpicc >/dev/null 2>&1; then
    echo HOROVOD_WITH_MPI=1
  else
    echo HOROVOD_WITHOUT_MPI=1
  fi
  if [ "$MXNET_DIST" != "mxnet" ]; then
    if [ -n "${HOROVOD_NCCL_HOME:-}" ] || ls /usr/lib/x86_64-linux-gnu/libnccl.so* >/dev/null 2>&1 \
       || ls /usr/local/cuda/lib64/libnccl.so* >/dev/null 2>&1; then
      echo HOROVOD_GPU_OPERATIONS=NCCL
    fi
  fi
}

if [ "${FACEALIGN_SETUP_PLAN:-0}" = 1 ]; then
  if [ "$MXNET_DIST" = preinstalled ]; then
    echo "mxnet: preinstalled, must be $MXNET_VERSION (never pip-installed over)"
    echo "horovod: preinstalled, must be 0.28 with MXNet, and NCCL when MXNet has CUDA (horovodrun --check-build); not built"
    echo "numpy: kept at the preinstalled version (a pip constraint)"
  else
    echo "mxnet wheel: $MXNET_DIST==$MXNET_VERSION"
    echo "horovod $HOROVOD_VERSION build flags: $(horovod_flags | tr '\n' ' ')"
  fi
  echo "python: $VENV ($PYTHON)"
  exit 0
fi

# --- the interpreter --------------------------------------------------------
if [ "$VENV" = "system" ]; then
  py="$(command -v "$PYTHON")"
  stamp_dir="$here/.setup"
else
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  py="$VENV/bin/python"
  stamp_dir="$VENV"
fi
mkdir -p "$stamp_dir"

inputs_hash() {
  {
    echo "$MXNET_DIST $MXNET_VERSION $HOROVOD_VERSION"
    cat "$here/install.sh" "$here/pyproject.toml"
    find "$here/native" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' \) \
      -not -name '*.cpp' -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}
stamp="$stamp_dir/.facealign-setup"
want="$(inputs_hash)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "import facealign, horovod.mxnet" 2>/dev/null; then
  say "environment up to date ($py)"
  exit 0
fi

pip() { "$py" -m pip --disable-pip-version-check "$@"; }

# --- a preinstalled MXNet and Horovod (NVIDIA's container): check them, pin them ---
mxnet_req=("$MXNET_DIST==$MXNET_VERSION" "numpy<1.24")
if [ "$MXNET_DIST" = preinstalled ]; then
  found="$("$py" -c 'import mxnet, numpy; print(mxnet.__version__, numpy.__version__, int(mxnet.runtime.Features().is_enabled("CUDA")))' 2>&1)" || {
    echo "install.sh: FACEALIGN_MXNET=preinstalled, but $py cannot import mxnet: $(echo "$found" | tail -1)" >&2; exit 2; }
  read -r have_mxnet have_numpy have_cuda <<<"$(echo "$found" | tail -1)"
  [ "$have_mxnet" = "$MXNET_VERSION" ] || {
    echo "install.sh: FACEALIGN_MXNET=preinstalled, but $py has mxnet $have_mxnet; facealign needs $MXNET_VERSION" >&2; exit 2; }
  have_horovod="$("$py" -c 'import horovod, horovod.mxnet; print(horovod.__version__)' 2>/dev/null)" || {
    echo "install.sh: FACEALIGN_MXNET=preinstalled, but $py has no Horovod with MXNet support (import horovod.mxnet failed)" >&2; exit 2; }
  case "$have_horovod" in 0.28.*) ;; *)
    echo "install.sh: FACEALIGN_MXNET=preinstalled, but $py has horovod $have_horovod; facealign needs 0.28" >&2; exit 2 ;; esac
  build="$("$py" -m horovod.runner.launch --check-build 2>&1 || true)"
  echo "$build" | grep -q '\[X\] MXNet' || {
    echo "install.sh: the preinstalled Horovod was built without MXNet (horovodrun --check-build)" >&2; exit 2; }
  if [ "$have_cuda" = 1 ] && ! echo "$build" | grep -q '\[X\] NCCL'; then
    echo "install.sh: the preinstalled MXNet has CUDA but its Horovod lacks NCCL (horovodrun --check-build)" >&2; exit 2
  fi
  say "using the preinstalled mxnet $have_mxnet (CUDA: $have_cuda) and horovod $have_horovod; numpy stays $have_numpy"
  # nothing below may replace them: numpy is pinned, MXNet and Horovod are never named
  constraints="$stamp_dir/.facealign-constraints.txt"
  printf 'numpy==%s\n' "$have_numpy" > "$constraints"
  export PIP_CONSTRAINT="$constraints"
  mxnet_req=()
fi

# --- Python packages ---------------------------------------------------------
# numpy<1.24: mxnet 1.9.1 uses np.bool, removed in 1.24 (apache/mxnet#21165).
say "installing ${mxnet_req[0]:-the Python dependencies beside the preinstalled MXNet}${mxnet_req[0]:+ and the Python dependencies}"
pip install -q --upgrade "pip>=23" wheel "setuptools<70"
pip install -q ${mxnet_req[@]+"${mxnet_req[@]}"} \
  "opencv-python-headless<4.11" pyyaml tensorboardX tensorboard "scipy<1.12" "cython>=3" pytest psutil \
  tqdm "matplotlib<3.11" pillow threadpoolctl \
  "onnx==1.14.1" dlib-bin coloredlogs flatbuffers sympy absl-py attrs "protobuf>=4.25.3,<5" "tensorboard<2.21" \
  "scikit-image==0.20.*" "mkdocs==1.6.*"
# onnxruntime 1.16.3: the last release whose quantizer (int8 exports) works with the onnx 1.14 that
# mxnet.onnx needs. Its metadata asks for numpy>=1.24.2, but it runs with MXNet's numpy<1.24 (the ONNX
# tests check it), so it goes in without its declared dependencies (installed above).
pip install -q --no-deps "onnxruntime==1.16.3"
# mediapipe 0.10.14: BlazeFace, the default face detector (its model is inside the wheel; 0.10.30 and
# later ship none). Without its declared dependencies: jax and sounddevice serve other solutions, and
# opencv-contrib-python would install a second cv2 over the headless one. What its face detector needs is
# installed above: protobuf<5 (its generated code), with the last TensorBoard that runs on protobuf 4.
pip install -q --no-deps "mediapipe==0.10.14"
# mkdocs: the documentation site (docs/; the tests build it with --strict).
# onnx<1.15: what mxnet.onnx can export to; onnxruntime runs it. dlib-bin: dlib's HOG face detector
# (prebuilt, model inside). scikit-image: only the tests, whose re-telling of the reference's
# test_rec_nme.py aligns faces with skimage's SimilarityTransform as the reference did.

# --- Horovod, built from source against the MXNet just installed ------------
horovod_ok() {
  "$py" - <<'EOF' 2>/dev/null
import horovod, horovod.mxnet as hvd  # the import itself fails without the MXNet extension
assert horovod.__version__ == "0.28.1" and hvd.gloo_built()
EOF
}
if [ "$MXNET_DIST" = preinstalled ]; then
  say "horovod: the preinstalled one (checked above)"
elif horovod_ok; then
  say "horovod $HOROVOD_VERSION already built with MXNet and Gloo"
else
  say "building horovod $HOROVOD_VERSION against $MXNET_DIST (about 3 minutes on 2 cores)"
  for flag in $(horovod_flags); do export "${flag?}"; done
  say "  flags: $(horovod_flags | tr '\n' ' ')"
  # Horovod's vendored gloo needs cmake_minimum_required < 3.5 support; pip's cmake 4 refuses it.
  export CMAKE_POLICY_VERSION_MINIMUM=3.5
  export MAKEFLAGS="-j$(nproc)"
  # --no-build-isolation: the build must see the MXNet installed above, not a fresh one.
  # No [mxnet] extra: it would pull the CPU mxnet over a CUDA wheel (horovod#3455).
  pip install --no-build-isolation --no-binary horovod "horovod==$HOROVOD_VERSION"
  horovod_ok || { echo "install.sh: horovod built but lacks MXNet or Gloo support" >&2; exit 1; }
fi

# --- facealign itself (editable; builds the Cython extensions in native/) ---
say "installing facealign (editable) and building native/ extensions"
pip install -q --no-build-isolation -e "$here"
"$py" -c "import facealign" >/dev/null

echo "$want" > "$stamp"
say "done: $("$py" -c 'import mxnet, horovod; print("mxnet", mxnet.__version__, "| horovod", horovod.__version__)')"
