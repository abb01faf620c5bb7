"""decoder.py's sampling: batched classifier-free guidance, seeding and clipping, overfitting a few
images, and the DDIM inversion round trip."""

import pytest
import torch
from tiny_decoder import inputs, make, seeded


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_batched_cfg_equals_two_separate_passes(learn_sigma):
    model = make(learn_sigma=learn_sigma, out_channels=6 if learn_sigma else 3)
    x, t, z, tokens, mask = inputs()
    calls = []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    guided = {s: model._model_fn(z, tokens, mask, guidance_scale=s)(x, t) for s in (0.0, 1.0, 3.0)}
    assert len(calls) == 3  # one forward for both halves
    cond = model.net(x, t, z, tokens, mask)
    uncond = model.net(x, t, None, None, None)  # both conditions dropped
    assert (cond - uncond).abs().max() > 1e-2
    eps = uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3])  # [CFG] Eq. 6
    # the variance channels (learn_sigma) are the conditional ones, not guided [GLIDE] Sec. 2.3
    assert torch.allclose(guided[3.0], torch.cat([eps, cond[:, 3:]], dim=1), atol=1e-5)
    assert torch.allclose(guided[1.0], cond, atol=1e-6)  # s = 1: the conditional model
    assert torch.allclose(guided[0.0][:, :3], uncond[:, :3], atol=1e-6)  # s = 0: unconditional


def test_sampling_is_seeded_guided_and_clipped():
    model = make().eval()
    _, _, z, tokens, mask = inputs(B=2)
    a, b, c = (model.sample(z, tokens, mask, steps=4, generator=seeded(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, model.sample(z, tokens, mask, steps=4, guidance_scale=1.0,
                                              generator=seeded(7)), atol=1e-3)
    # static clipping: the last step returns the x_0 estimate, clamped to [-1, 1]; this
    # scrambled net's estimates overshoot, so the clamp is what keeps the range
    for eta in (None, 0.0):
        out = model.sample(z, tokens, mask, steps=4, eta=eta, generator=seeded(7))
        assert out.abs().max() <= 1 and (out.abs() == 1).float().mean() > 0.2


def test_loss_falls_when_overfitting_a_few_images():
    torch.manual_seed(0)
    model = make(scramble=0, p_drop_image=0.0, p_drop_text=0.0)
    x = -torch.ones(4, 3, 16, 16)  # four coloured squares on black
    for i, (colour, (r, c)) in enumerate(zip(torch.eye(3).tolist() + [[1, 1, 0]],
                                             [(2, 2), (8, 2), (2, 8), (8, 8)], strict=True)):
        x[i, :, r:r + 6, c:c + 6] = torch.tensor(colour)[:, None, None] * 2 - 1
    _, _, z, tokens, mask = inputs()
    batch = lambda n: (x.repeat(n, 1, 1, 1), z.repeat(n, 1), tokens.repeat(n, 1), mask.repeat(n, 1))
    evaluate = lambda: model.loss_terms(*batch(4), generator=seeded(123))  # fixed t and noise
    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(30):
        opt.zero_grad()
        model.loss(*batch(2), generator=seeded(step)).backward()
        opt.step()
    after = evaluate()
    # eps-prediction error starts at E[eps^2] = 1 (the output is zero-initialised)
    assert 0.9 < before["mse"] < 1.1 and after["mse"] < 0.4, (before, after)
    assert after["loss"] < 0.3 * before["loss"], (before, after)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_ddim_inversion_round_trip_is_exact_when_eps_ignores_x_t_and_t(guidance_scale):
    # DDIM inversion [DDIM] Sec. 4.3 steps forward with the eps of the step's start, sampling
    # back uses the eps of its end; the two are the same when the net's eps depends on neither
    # x_t nor t (input conv and time MLP output zeroed), so x_T -> x_0 retraces x_0 -> x_T
    # exactly and every x_0 estimate is x_0 itself (no clipping). Exact but for float32
    # rounding, which the first step back multiplies by 1/sqrt(alpha_bar_{T-1}) ~ 2000: 1/255.
    # The eps still depends on z_i, the caption and the guidance scale, which must match.
    model = make()
    with torch.no_grad():
        model.net.input_conv.weight.zero_(), model.net.time_embed[-1].weight.zero_()
    model.eval()
    x, _, z, tokens, mask = inputs(B=2)
    x = x.clamp(-1, 1)
    seen = []  # the timesteps the net is called at: inversion runs the sampler's in reverse
    model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[1][0].item()))
    x_T = model.invert(x, z, tokens, mask, steps=5, guidance_scale=guidance_scale)
    assert seen == [0, 25, 50, 74, 99]  # 5 evenly spaced of T = 100, both ends [IDDPM] Sec. 4
    assert x_T.std() > 0.3  # noise-like, not x_0 (alpha_bar_{T-1} is ~2e-7)
    back = lambda **kw: model.sample(**{"z_i": z, "tokens": tokens, "mask": mask, "steps": 5,
                                        "guidance_scale": guidance_scale, "eta": 0.0,
                                        "noise": x_T, **kw})
    seen.clear()
    assert (back() - x).abs().max() < 1 / 255
    assert seen == [99, 74, 50, 25, 0]
    assert (back(z_i=z.flip(0)) - x).abs().max() > 0.1  # another z_i: another image
    assert (back(guidance_scale=2.0) - x).abs().max() > 0.1


def test_ddim_inversion_round_trip_error_falls_with_steps():
    # A generic net (v-prediction, the toy decoder's): inversion's first-order error shrinks
    # about as 1/steps [DDIM] Sec. 4.3. Here about 0.5 at 6 steps and 0.15-0.2 at 24.
    model = make(scramble=0.03, mean_type="v").eval()
    x, _, z, tokens, mask = inputs(B=1)
    x = x.clamp(-1, 1)
    err = {}
    for steps in (6, 24):
        x_T = model.invert(x, z, tokens, mask, steps=steps, guidance_scale=1.0)
        back = model.sample(z, tokens, mask, steps=steps, guidance_scale=1.0, eta=0.0, noise=x_T)
        err[steps] = (back - x).abs().max().item()
    assert err[24] < 0.25 and err[24] < err[6] / 2, err
