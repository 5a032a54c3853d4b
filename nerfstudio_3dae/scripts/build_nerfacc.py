"""``ns-3dae-build-nerfacc``: build nerfacc's CUDA extension once, outside any training run (docs/gpu.md).

A thin CLI over :func:`nerfstudio_3dae.nerfacc_build.build_nerfacc`: removes a stale lock of torch's JIT build
folder, patches a copy of nerfacc's sources for CUDA 13 / C++20 (two checked replacements, see that module), builds
it in a child process with a time limit, and prints the seconds and the built module or the compiler's error lines.
Exit status 0 when built, 1 when not. Needs nvcc and the CUDA headers, not a GPU (without one, set
``TORCH_CUDA_ARCH_LIST``); training then picks nerfacc (``--pipeline.model.backend auto``) where a GPU is present.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class BuildNerfacc:
    """Build nerfacc's CUDA extension into torch's JIT build folder (``$TORCH_EXTENSIONS_DIR/nerfacc_cuda``)."""

    timeout_s: float = 1800.0
    """Stop the build (compiler included) after this many seconds."""


def entrypoint() -> None:
    """Console script ``ns-3dae-build-nerfacc``."""
    import tyro
    from rich.console import Console

    from nerfstudio_3dae.backends import nerfacc_build_dir
    from nerfstudio_3dae.nerfacc_build import build_nerfacc, patched_sources_dir

    config = tyro.cli(BuildNerfacc)
    console = Console(soft_wrap=True, highlight=False)
    build_dir = nerfacc_build_dir()
    console.print(
        f"building nerfacc's CUDA extension in {build_dir} from the patched sources {patched_sources_dir(build_dir)} "
        f"(at most {config.timeout_s:.0f} s)",
        markup=False,
    )
    result = build_nerfacc(config.timeout_s)
    status = "ok" if result.ok else "FAILED"
    console.print(f"ns-3dae-build-nerfacc: {status} after {result.seconds:.1f} s: {result.message}", markup=False)
    if result.log is not None:
        console.print(f"whole build output: {result.log}", markup=False)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    entrypoint()
