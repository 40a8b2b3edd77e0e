"""``dhumandiff verify BUNDLE``: is this bundle complete and untouched? Offline, torch-free, no runtime needed.

For the machine a bundle is copied onto (a venue kiosk, a phone build): :func:`load_manifest` already refuses a
missing file, a sha256 mismatch, a path escaping the folder, a wrong format version or an inconsistent contract
(each a one-line :class:`~dhumandiff.errors.BundleError`, exit code 10); this adds the summary a person checks
after the copy: what the bundle is, how many files and bytes were verified. Stricter than loading in one way: a
tokenizer without a sha256 in bundle.json (which the reader tolerates from hand-made bundles) is refused here, since
"every sha256 matches" must cover every file the bundle loads.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dhumandiff.contract.bundle import load_manifest
from dhumandiff.errors import BundleError


@dataclass(frozen=True)
class VerifyReport:
    bundle: str
    model_name: str
    backbone: str
    runtime: str
    precision: str
    components: list[str]
    files: int
    bytes: int
    created_by: str | None
    #: What the bundle was exported from (``source_model``) and, for ``--batch`` exports, the source's sha256.
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"ok: {self.bundle} ({self.model_name}, {self.backbone}, {self.runtime} {self.precision}): "
                f"{self.files} files, {self.bytes / 1e6:.1f} MB, every sha256 matches bundle.json")


def verify_bundle(path: str | os.PathLike) -> VerifyReport:
    """Hash every file of the bundle against ``bundle.json``; raises BundleError on the first problem."""
    m = load_manifest(path, verify=True)
    root = Path(m.root)  # type: ignore[arg-type]
    for where, tok in (("tokenizer", m.tokenizer), ("tokenizer_2", m.tokenizer_2)):
        if tok is not None and tok.sha256 is None:
            raise BundleError(f"bundle.json has no {where}.sha256, so a changed {tok.file} would go unnoticed; "
                              "re-export the bundle with `dhumandiff export`")
    files = {rel for comp in m.components.values() for rel in comp.sha256}
    files |= {tok.file for tok in (m.tokenizer, m.tokenizer_2) if tok is not None}
    size = sum((root / rel).stat().st_size for rel in files)
    source = {k: m.extra[k] for k in ("source_model", "batch_source") if k in m.extra}
    return VerifyReport(str(root), m.model_name, m.backbone, m.runtime, m.precision, sorted(m.components),
                        len(files) + 1, size + (root / "bundle.json").stat().st_size, m.created_by, source)
