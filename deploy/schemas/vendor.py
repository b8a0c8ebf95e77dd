"""Re-vendor the custom-resource JSON schemas in this folder from pinned npm packages.

Run by hand when bumping a pin, never in CI (CI validates offline against the
committed files): ``python deploy/schemas/vendor.py``. Needs ``npm`` (only to
fetch the tarballs). Each tarball is checked against its pinned sha512
integrity before anything is read from it.

Why npm: no PyPI or Debian package bundles the Prometheus-Operator or Gateway
API CRD schemas; the MIT-licensed ``@kubernetes-models/*`` packages do, as the
CRDs' ``openAPIV3Schema`` converted to JSON Schema (``const schema = {...}`` in
each model module). The ``metadata`` reference is replaced by ``object``:
``deploy/validate.py`` checks ObjectMeta with kubernetes-validate's own schema.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (npm package, version, dist.integrity, module inside the tarball, output file)
PINS = [
    ("@kubernetes-models/prometheus-operator", "1.6.3",
     "sha512-K5OTYnqWB40puLsntlQjvMz5viH0NNorPBjnB8CRdq1k/u7aIXOH+yk5wzxX0FZQeo2qy3cETVUjjYkEF8IOcQ==",
     "package/monitoring.coreos.com/v1/ServiceMonitor.js", "servicemonitor-monitoring.coreos.com-v1.json"),
    ("@kubernetes-models/gateway-api", "0.5.1",
     "sha512-VsB6ipjcLCvOPmAbqxiK9dEEwD/yYGs5lkBTRFG2EcVGFy4o+JMWrTHuAXvaLtycGG67/qWJhHW8MtUhKJLdBg==",
     "package/gateway.networking.k8s.io/v1/HTTPRoute.js", "httproute-gateway.networking.k8s.io-v1.json"),
]

SCHEMA_LITERAL = re.compile(r"const schema = (\{.*?\n\});\n", re.DOTALL)


def npm_pack(package: str, version: str, workdir: Path) -> Path:
    out = subprocess.run(["npm", "pack", f"{package}@{version}", "--json", "--pack-destination", str(workdir)],
                         check=True, capture_output=True, text=True).stdout
    return workdir / json.loads(out)[0]["filename"]


def verify_integrity(tarball: Path, integrity: str) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{tarball.name}: integrity {digest} does not match the pin {integrity}")


def extract_schema(tarball: Path, module: str) -> dict:
    with tarfile.open(tarball) as tar:
        source = tar.extractfile(module).read().decode()
    match = SCHEMA_LITERAL.search(source)
    if not match:
        raise SystemExit(f"{tarball.name}:{module}: no `const schema = {{...}}` literal (package layout changed?)")
    schema = json.loads(match.group(1))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by kubernetes-validate
    return schema


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for package, version, integrity, module, filename in PINS:
            tarball = npm_pack(package, version, Path(tmp))
            verify_integrity(tarball, integrity)
            schema = extract_schema(tarball, module)
            schema["$comment"] = (f"Vendored from npm {package}@{version} ({module}, MIT; generated from the "
                                  f"upstream Apache-2.0 CRD) by deploy/schemas/vendor.py")
            (HERE / filename).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(f"wrote {filename} from {package}@{version}")


if __name__ == "__main__":
    main()
