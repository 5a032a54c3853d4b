"""Host -> device copies (:mod:`nerfstudio_3dae.transfer`): where pinned memory cannot be had, the copy is an ordinary
one, and the run is told once."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nerfstudio_3dae import transfer


def test_a_refused_pinned_copy_is_an_ordinary_one_said_once(monkeypatch):
    """Where pinned host memory cannot be had, the copy is an ordinary one (on a GPU it makes the host wait): the
    first failure is logged with torch's reason, later ones are not."""
    empty, logged = torch.empty, []

    def refused(*args, pin_memory=False, **kwargs):
        if pin_memory:
            raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", refused)
    monkeypatch.setattr(transfer, "PINNING_FAILURE", [])
    monkeypatch.setattr(transfer, "CONSOLE", SimpleNamespace(log=logged.append))
    assert transfer._pinned((4, 3), torch.uint8) is None
    assert transfer._pinned((2,), torch.long) is None
    assert len(logged) == 1, "said once"
    assert "pinned host memory could not be had (CUDA error: out of memory)" in logged[0]
    assert "wait for the device" in logged[0]
    assert transfer.PINNING_FAILURE == ["CUDA error: out of memory"]
