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
    render = pipe.model.get_outputs_for_cameras

    def recorded(cameras):
        events.append(("render", cameras.shape[0]))
        return render(cameras)

    monkeypatch.setattr(pipe.model, "get_outputs_for_cameras", recorded)
    pipe.config.eval_views_per_batch = 2
    metrics = pipe.get_average_eval_image_metrics(step=0)
    views = len(pipe.datamanager.fixed_indices_eval_dataloader)
    sizes = [2] * (views // 2) + [views % 2] * (views % 2)  # the test views rendered two at a time
    assert events == [e for size in sizes for e in (("sync", "cpu"), ("render", size), ("sync", "cpu"))]
    assert metrics["fps"] > 0


def test_views_rendered_together_are_the_views_rendered_alone(tiny_dataset, one_thread):
    pipe = tiny_pipeline(rgb_method(), tiny_dataset(num_scenes=2))
    pipe.eval()
    cameras, _ = pipe.datamanager.views("eval", [0, 1])
    together = pipe.model.get_outputs_for_cameras(cameras)
    for k in range(2):
        alone = pipe.model.get_outputs_for_camera(cameras[k : k + 1])
        for key in ("rgb", "depth", "accumulation"):
            torch.testing.assert_close(together[k][key], alone[key], atol=1e-5, rtol=1e-4)
