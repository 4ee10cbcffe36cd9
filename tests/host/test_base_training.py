"""Training the toy world's base UNet through ComfyUI's model: two data sets at two sizes, and a
run interrupted and resumed ending with the weights of the uninterrupted one."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    pass


def _fresh(checkpoint):
    import comfy.sd

    return comfy.sd.load_checkpoint_guess_config(str(checkpoint))[0]


def _data():
    gen = torch.Generator().manual_seed(0)
    large = (torch.randn(6, 4, 16, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]))
    small = (torch.randn(6, 4, 8, 8, generator=gen), torch.tensor([2, 1, 0, 2, 1, 0]))
    conds = torch.randn(3, 77, 768, generator=gen)
    return [large, small], conds, torch.zeros(1, 77, 768)


def test_every_kth_batch_comes_from_the_second_data_set(comfy, sd15_checkpoint):
    from omg_core.toyworld import base_model as B

    model = _fresh(sd15_checkpoint)
    sizes = []
    apply_model = model.model.apply_model

    def spy(x, *args, **kwargs):
        sizes.append(x.shape[-1])
        return apply_model(x, *args, **kwargs)

    model.model.apply_model = spy
    data, conds, uncond = _data()
    stage = B.UNetStage(steps=6, batch=2, lr=1e-4, seed=1, low_res_every=3)
    B.train_unet(model, data, conds, uncond, B.BaseTrainSettings(), stage)
    assert sizes == [16, 16, 8, 16, 16, 8]
    with pytest.raises(ValueError, match="second data set"):
        B.train_unet(_fresh(sd15_checkpoint), data[:1], conds, uncond, B.BaseTrainSettings(), stage)


def test_an_interrupted_stage_resumes_to_the_uninterrupted_weights(comfy, sd15_checkpoint, tmp_path):
    from omg_core.toyworld import base_model as B

    data, conds, uncond = _data()
    settings = B.BaseTrainSettings()
    stage = B.UNetStage(steps=5, batch=2, lr=1e-3, seed=1, low_res_every=2)
    whole = B.train_unet(_fresh(sd15_checkpoint), data, conds, uncond, settings, stage)

    def stop_after(n):
        def progress(done, total):
            if done == n:
                raise Stop

        return progress

    resume = tmp_path / "unet.resume.pt"
    with pytest.raises(Stop):
        B.train_unet(
            _fresh(sd15_checkpoint),
            data,
            conds,
            uncond,
            settings,
            stage,
            stop_after(3),
            resume_path=resume,
            save_every=2,
        )
    assert resume.exists()
    resumed = B.train_unet(
        _fresh(sd15_checkpoint), data, conds, uncond, settings, stage, resume_path=resume, save_every=2
    )
    assert not resume.exists()
    changed = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not changed, changed[:5]
    start = _fresh(sd15_checkpoint).model.diffusion_model.state_dict()
    assert any(not torch.equal(whole[k], start[k].float()) for k in whole)  # it trained
