"""The eval frame rate times the renders themselves: on a GPU the clock is read only after the device finished."""

from __future__ import annotations

import torch
from conftest import tiny_pipeline

from nerfstudio_3dae import pipeline as pipeline_module
from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.pipeline import synchronize


def test_synchronize_waits_for_cuda_devices_only(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    synchronize("cpu")
    synchronize(torch.device("cpu"))
    assert waited == [], "nothing to wait for on the CPU (and no CUDA call there)"
    synchronize("cuda:1")
    assert waited == [torch.device("cuda", 1)], "the model's own device"


def test_every_timed_render_is_bracketed_by_a_synchronize(tiny_dataset, one_thread, monkeypatch):
    pipe = tiny_pipeline(rgb_method(), tiny_dataset(num_scenes=2))
    events = []
    monkeypatch.setattr(pipeline_module, "synchronize", lambda device: events.append(("sync", str(device))))
    render = pipe.model.get_outputs_for_camera

    def recorded(camera):
        events.append(("render", None))
        return render(camera)

    monkeypatch.setattr(pipe.model, "get_outputs_for_camera", recorded)
    metrics = pipe.get_average_eval_image_metrics(step=0)
    views = len(pipe.datamanager.fixed_indices_eval_dataloader)
    assert events == [("sync", "cpu"), ("render", None), ("sync", "cpu")] * views
    assert metrics["fps"] > 0
