"""Learning, not just shapes: 3dae-latent with the embedded autoencoder on two generated cars, trained by
nerfstudio's Trainer on the CPU with the method's schedule (a quarter of the steps on cached latents, then the decoded
phase), must raise the decoded test PSNR well above where it starts, and the decoded phase must add to it."""

from __future__ import annotations

from pathlib import Path

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

from nerfstudio_3dae.autoencoder_source import EMBEDDED_AUTOENCODER
from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.method_configs import latent_method

STEPS = 240
FINETUNE_FROM = 60  # a quarter, as the method's defaults (750 of 3000)
MIN_PSNR = 16.5  # dB, decoded test views (the embedded autoencoder alone at these 64² views: 23.1 dB)
MIN_GAIN = 5.0  # dB over the untrained model
MIN_DECODED_GAIN = 0.5  # dB the decoded phase adds over the latent phase's end


def test_decoded_psnr_rises_on_generated_cars(tmp_path: Path, one_thread):
    assert (EMBEDDED_AUTOENCODER / "config.json").is_file(), "the embedded autoencoder ships with the package"
    data = generate_dataset(tmp_path / "cars", 2, 14, 64, seed=11, test_views=2, progress=False)
    config = latent_method()
    config.pipeline.datamanager.data = data
    config.output_dir = tmp_path / "runs"
    config.vis = "tensorboard"
    config.max_num_iterations = STEPS
    config.steps_per_eval_image = config.steps_per_eval_all_images = config.steps_per_save = 10_000
    model = config.pipeline.model
    model.resolution, model.num_bases = 32, 8
    model.num_coarse_samples = model.num_fine_samples = 32
    model.finetune_start = FINETUNE_FROM
    config.set_timestamp()

    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    before = trainer.pipeline.get_average_eval_image_metrics(step=0)
    switch = {}
    trainer.callbacks.append(
        TrainingCallback(
            [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
            lambda step: switch.update(trainer.pipeline.get_average_eval_image_metrics(step=step)),
            iters=(FINETUNE_FROM,),
        )
    )
    trainer.train()
    after = trainer.pipeline.get_average_eval_image_metrics(step=STEPS)

    print(
        f"decoded test PSNR {before['psnr']:.2f} -> {switch['psnr']:.2f} (step {FINETUNE_FROM}) -> "
        f"{after['psnr']:.2f} dB, latent PSNR "
        f"{before['latent_psnr']:.2f} -> {after['latent_psnr']:.2f} dB, autoencoder {after['autoencoded_psnr']:.2f} dB"
    )
    assert after["psnr"] >= MIN_PSNR
    assert after["psnr"] >= before["psnr"] + MIN_GAIN
    assert after["latent_psnr"] > before["latent_psnr"] + MIN_GAIN
    assert after["psnr"] >= switch["psnr"] + MIN_DECODED_GAIN, "the decoded phase adds to the latent phase"
