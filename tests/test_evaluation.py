"""Offline metrics: attribute detector, prompt following, seams, level consistency, flicker, Fréchet/FVD (§7)."""

import json
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_close_rounding, log2_length, rounding_atol

from diffusers_hpdm.data import caption, generate_dataset, render_video
from diffusers_hpdm.evaluation import (
    border_energy_profile,
    compute_fvd,
    detect_attributes,
    feature_statistics,
    frechet_distance,
    grain_ratio,
    high_frequency_energy,
    i3d_features,
    level_consistency,
    load_i3d,
    preprocess_for_i3d,
    prompt_following_accuracy,
    seam_score,
    temporal_flicker,
    tile_edges,
)

ATTRS = ("colour", "shape", "direction", "speed")


def _area_down(video, f, h, w):
    n, H, W, c = video.shape
    return video.reshape(f, n // f, h, H // h, w, W // w, c).mean(axis=(1, 3, 5))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """40 generated videos at 16x64x64, decoded after the mp4 (yuv420p) round trip, with their metadata."""
    root = generate_dataset(tmp_path_factory.mktemp("eval") / "ds", num_videos=40, num_frames=16, seed=11)
    rows = [json.loads(line) for line in open(root / "metadata.jsonl")]
    videos = [iio.imread(root / r["file_name"], plugin="FFMPEG", index=None) for r in rows]
    return videos, rows


@pytest.mark.parametrize("size", [(16, 64, 64), (4, 16, 16)])
def test_detector_accuracy_after_mp4_round_trip(shapes, size):
    videos, rows = shapes
    hits = dict.fromkeys(ATTRS, 0)
    for video, row in zip(videos, rows):
        x = _area_down(video.astype(np.float64) / 255.0, *size)
        detected = detect_attributes(x)
        for name in ATTRS:
            hits[name] += detected[name] == row[name]
    accuracy = {name: hits[name] / len(rows) for name in ATTRS}
    print(f"detector accuracy at {size}: {accuracy}")
    assert min(accuracy.values()) >= 0.98, accuracy


def test_detector_without_foreground_or_motion():
    blank = np.full((4, 16, 16, 3), 40, dtype=np.uint8)
    result = detect_attributes(blank)
    assert result["colour"] is None and result["shape"] is None and result["confidence"] == 0.0
    attrs = dict(colour="yellow", shape="triangle", direction="up", speed="quickly", background="dark green")
    still = detect_attributes(render_video(attrs, 1, 32, 32, np.random.default_rng(0)))
    assert (still["colour"], still["shape"], still["direction"]) == ("yellow", "triangle", None)


def test_prompt_following_accuracy(shapes):
    videos, rows = shapes
    videos = videos[:12]
    prompts = [caption(r) for r in rows[:12]]
    assert prompt_following_accuracy(videos, prompts) == dict.fromkeys((*ATTRS, "all"), 1.0)
    swap = {"red": "green", "green": "blue", "blue": "red", "yellow": "cyan", "cyan": "magenta", "magenta": "yellow"}
    wrong = [caption({**r, "colour": swap[r["colour"]]}) for r in rows[:12]]
    result = prompt_following_accuracy(videos, wrong)
    assert result["colour"] == 0.0 and result["all"] == 0.0 and result["shape"] == 1.0
    partial = prompt_following_accuracy(videos, [f"a {r['colour']} thing" for r in rows[:12]])
    assert partial == {"colour": 1.0, "all": 1.0}  # only mentioned attributes are scored
    with pytest.raises(ValueError):
        prompt_following_accuracy(videos, prompts[:3])


# ---------------------------------------------------------------- seams


def _smooth_field(shape, length_scale, seed):
    """Stationary Gaussian random field (periodic), unit-free, std ~0.05 around 0.5."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    fy = np.fft.fftfreq(shape[1])[:, None]
    fx = np.fft.rfftfreq(shape[2])[None, :]
    transfer = np.exp(-2 * (np.pi * length_scale) ** 2 * (fy**2 + fx**2))[None, :, :, None]
    field = np.fft.irfft2(np.fft.rfft2(noise, axes=(1, 2)) * transfer, s=shape[1:3], axes=(1, 2))
    return 0.5 + 0.05 * field / field.std()


def test_tile_edges():
    assert tile_edges(64, 32, 16) == [16, 32, 48]
    assert tile_edges(64, 32, 32) == [32]
    assert tile_edges(40, 16, 16) == [16, 24, 32]  # last window snapped to [24, 40)
    assert tile_edges(16, 16, 8) == []


def test_seam_score_smooth_vs_injected_step():
    video = _smooth_field((4, 64, 64, 3), length_scale=3.0, seed=0)
    borders = (tile_edges(64, 32, 16), tile_edges(64, 32, 16))
    smooth = seam_score(video, borders)
    assert 0.85 < smooth < 1.15
    stepped = video.copy()
    stepped[:, 16:48, 16:48] += 0.05  # a tile whose level is off: steps exactly on borders 16 and 48
    assert seam_score(stepped, borders) > 3.0
    assert seam_score(stepped, ([8, 24, 40, 56], [8, 24, 40, 56])) < 1.0  # steps are not on these lines
    assert seam_score((stepped * 255).round().astype(np.uint8), borders) > 3.0  # uint8 input


def test_border_energy_profile_locates_steps_by_residue():
    video = _smooth_field((4, 64, 64, 3), length_scale=3.0, seed=0)
    flat = border_energy_profile(video, 16)
    assert flat.shape == (16,) and np.all((flat > 0.8) & (flat < 1.2))  # stationary: ~1 at every residue
    blocky = video.copy()
    for b in range(0, 64, 16):  # a level offset on every 16-pixel block: steps on borders 16, 32, 48 (residue 0)
        blocky[:, b : b + 16] += 0.03 * (b // 16 % 2)
        blocky[:, :, b : b + 16] += 0.03 * (b // 16 % 2)
    profile = border_energy_profile(blocky, 16)
    assert profile[0] > 3.0 and np.all(profile[1:] < 1.0)
    borders_per_residue = np.bincount(np.arange(1, 64) % 16, minlength=16)  # 3 at residue 0 (16, 32, 48), else 4
    # normalised by the mean (float64: the 16-term weighted mean and a few divisions)
    assert_close_rounding(profile @ borders_per_residue / borders_per_residue.sum(), 1.0, 16 + 4, 1.0)
    # residue 0 mod 8 pools residues 0 and 8 mod 16, weighted by their border counts (float64: the energies' sums
    # over the video, pooled in another order, at the profile's scale)
    pooled = border_energy_profile(blocky, 8)[0]
    assert_close_rounding(pooled, (3 * profile[0] + 4 * profile[8]) / 7, log2_length(blocky.size) + 8, profile.max())
    with pytest.raises(ValueError, match="period"):
        border_energy_profile(video, 0)


# ---------------------------------------------------------------- level consistency and flicker


def test_level_consistency_is_area_downsampling():
    rng = np.random.default_rng(0)
    coarse = rng.random((2, 8, 8, 3))
    fine = coarse.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    # float64 block means of 8 values (pairwise: 3 roundings) at scale 1 (1.2 with the checker): what is left of the
    # mse is that rounding squared
    exact = level_consistency(fine, coarse)
    assert exact["mse"] <= rounding_atol(1.0, 3, torch.float64) ** 2 and exact["psnr"] > 150
    assert level_consistency(coarse, coarse) == {"mse": 0.0, "psnr": float("inf")}
    checker = (np.indices((4, 16, 16)).sum(axis=0) % 2 * 2 - 1)[..., None] * 0.2  # averages to 0 in every 2x2x2
    assert level_consistency(fine + checker, coarse)["mse"] <= rounding_atol(1.2, 4, torch.float64) ** 2
    shifted = level_consistency(fine + 0.1, coarse)
    # the 0.1 difference carries the shift's and the means' rounding (4 at scale 1.1), twice in its square, and the
    # mean over the entries; the psnr is 10 / ln(10) times that relative error
    rel = 2 * rounding_atol(1.1 / 0.1, 4, torch.float64) + rounding_atol(1.0, log2_length(coarse.size), torch.float64)
    assert shifted["mse"] == pytest.approx(0.01, rel=rel)
    assert shifted["psnr"] == pytest.approx(20.0, abs=10 / np.log(10) * rel + rounding_atol(20.0, 2, torch.float64))
    only_spatial = level_consistency(coarse.repeat(2, axis=1).repeat(2, axis=2), coarse)  # time does not grow
    assert only_spatial["mse"] <= rounding_atol(1.0, 2, torch.float64) ** 2
    with pytest.raises(ValueError):
        level_consistency(rng.random((4, 12, 16, 3)), coarse)


def test_high_frequency_energy_ramp_noise_and_grain_ratio():
    """The Laplacian energy is 0 on a linear ramp, adds 20 s^2 for independent noise of variance s^2, and the grain
    ratio of a video against itself is 1."""
    ramp = np.broadcast_to(np.linspace(0, 1, 32)[None, None, :, None], (4, 32, 32, 3))
    # five float64 terms of size <= 4: rounding error <= 8 eps per Laplacian, squared
    assert high_frequency_energy(ramp) <= (8 * np.finfo(np.float64).eps) ** 2
    rng = np.random.default_rng(0)
    attrs = dict(colour="red", shape="circle", direction="right", speed="slowly", background="gray")
    s, clip = 0.05, render_video(attrs, 8, 64, 64, np.random.default_rng(1)) / 255.0
    noisy = clip + rng.normal(0, s, clip.shape)
    n = clip[:, 1:-1, 1:-1].size  # interior samples
    # E[lap(x + e)^2] = E[lap(x)^2] + 20 s^2 (Laplacian taps 1, 1, 1, 1, -4; the cross term has mean 0). Standard
    # errors of the sample mean: the noise part L^2 (Gaussian L, Cov(L_i^2, L_j^2) = 2 Cov(L_i, L_j)^2, and the
    # kernel's autocorrelation 20, -8 (x4), 2 (x4), 1 (x4) has squares summing to 676) has s^2 sqrt(1352 / n); the
    # cross term 2 lap(x) L, by Cauchy-Schwarz over the autocorrelation's absolute sum 64, at most
    # 16 s sqrt(E[lap(x)^2] / n).
    base = high_frequency_energy(clip)
    noise_part = 20 * s**2
    std_err = s**2 * np.sqrt(1352 / n) + 16 * s * np.sqrt(base / n)
    assert abs(high_frequency_energy(noisy) - (base + noise_part)) < 6 * std_err
    assert grain_ratio([clip, clip], [clip]) == 1.0
    assert grain_ratio([noisy], [clip]) > 1.0
    with pytest.raises(ValueError, match="constant"):
        grain_ratio([clip], [np.zeros((2, 8, 8, 3))])
    with pytest.raises(ValueError, match="3x3"):
        high_frequency_energy(np.zeros((2, 2, 8, 3)))


def test_temporal_flicker_steady_vs_flickering():
    attrs = dict(colour="blue", shape="square", direction="right", speed="quickly", background="gray")
    video = render_video(attrs, 12, 32, 32, np.random.default_rng(1)).astype(np.float64) / 255
    steady = temporal_flicker(video)
    flickering = video + 0.04 * (np.arange(12) % 2)[:, None, None, None]
    assert steady < 2e-3
    assert abs(temporal_flicker(flickering) - 0.04) < steady + 1e-9
    assert temporal_flicker(video[:1]) == 0.0


# ---------------------------------------------------------------- Fréchet distance and FVD


def _spd(dim, seed):
    a = np.random.default_rng(seed).standard_normal((dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def _fd_atol(s1, s2, mean_sq: float = 0.0) -> float:
    """float64 rounding of `frechet_distance`: the eigenvalues mu of S1^1/2 S2 S1^1/2 come out of symmetric
    eigen-decompositions (two: S1's root, then the product) within delta = 2 dim eps |S1| |S2|, and their square roots
    within min(delta / (2 sqrt(mu)), sqrt(delta)) each (mu >= lambda_min(S1) lambda_min(S2)); the traces, the mean
    term and the final sum round at their own scale."""
    e1, e2 = np.linalg.eigvalsh(np.atleast_2d(s1)), np.linalg.eigvalsh(np.atleast_2d(s2))
    dim = len(e1)
    delta = rounding_atol(e1.max() * e2.max(), 2 * dim, torch.float64)
    mu_min = max(e1.min(), 0.0) * max(e2.min(), 0.0)
    per_root = min(delta / (2 * np.sqrt(mu_min)), np.sqrt(delta)) if mu_min > 0 else np.sqrt(delta)
    return 2 * dim * per_root + rounding_atol(e1.sum() + e2.sum() + mean_sq, 4, torch.float64)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), _spd(6, 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= _fd_atol(sigma, sigma)
    s1, s2 = rng.random(5) + 0.1, rng.random(5) + 0.1
    mu2 = mu[:5] + rng.standard_normal(5)
    mean_sq = np.sum((mu[:5] - mu2) ** 2)
    expected = mean_sq + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(mu[:5], np.diag(s1), mu2, np.diag(s2))
    assert abs(got - expected) <= _fd_atol(np.diag(s1), np.diag(s2), mean_sq)
    assert abs(frechet_distance(0.0, 4.0, 1.0, 9.0) - 2.0) <= _fd_atol(4.0, 9.0, 1.0)  # 1-D: 1 + (2 - 3)^2
    got = frechet_distance(mu, sigma, mu, 9 * sigma)
    assert abs(got - 4 * np.trace(sigma)) <= _fd_atol(sigma, 9 * sigma)


def test_frechet_distance_general_covariances():
    a, b = _spd(8, 2), _spd(8, 3)  # do not commute
    mu1, mu2 = np.zeros(8), np.ones(8)
    d = frechet_distance(mu1, a, mu2, b)
    # tr sqrt(A^1/2 B A^1/2) = sum sqrt(eig(A B)): the eigenvalues of AB are real and non-negative
    reference = 8 + np.trace(a) + np.trace(b) - 2 * np.sum(np.sqrt(np.linalg.eigvals(a @ b).real))
    # the reference's non-symmetric eigenvalues of AB round like the symmetric ones (AB is similar to the same
    # S1^1/2 S2 S1^1/2), so both sides carry that rounding
    atol = 2 * _fd_atol(a, b, 8.0)
    assert abs(d - reference) <= atol
    assert abs(d - frechet_distance(mu2, b, mu1, a)) <= atol  # symmetric
    singular = np.diag([1.0, 0.0, 2.0])  # PSD, rank-deficient: still well defined (zero eigenvalues: sqrt(delta))
    assert abs(frechet_distance(np.zeros(3), singular, np.zeros(3), singular)) <= _fd_atol(singular, singular)


def test_feature_statistics_recover_gaussian():
    mu, sigma = np.array([1.0, -2.0, 0.5]), _spd(3, 4)
    samples = np.random.default_rng(5).multivariate_normal(mu, sigma, size=20000)
    m, s = feature_statistics(samples)
    np.testing.assert_allclose(m, mu, atol=0.1)
    np.testing.assert_allclose(s, sigma, atol=0.15 * np.abs(sigma).max())
    assert frechet_distance(m, s, mu, sigma) < 0.02


class _StandInI3D(torch.nn.Module):
    """Scripted stand-in with the I3D TorchScript call signature: features = channel mean/std, range, size."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        assert return_features and not rescale and not resize
        b = x.shape[0]
        size = torch.full((b, 1), float(x.shape[-1] * 1000 + x.shape[2]))
        lo, hi = x.amin(dim=(1, 2, 3, 4)).unsqueeze(1), x.amax(dim=(1, 2, 3, 4)).unsqueeze(1)
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4)), lo, hi, size], dim=1)


@pytest.fixture
def i3d_file(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, the format the real I3D file uses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_StandInI3D()).save(str(path))
    return path


def test_preprocess_for_i3d():
    x = preprocess_for_i3d(np.full((2, 3, 16, 24, 3), 0.5))
    # float32: per axis the bilinear weights (1 - l, l) sum to 1 up to a rounding and their weighted sum rounds once
    # (eps per axis), doubled by 2 x - 1: 4 eps at scale 1 at worst (2 measured with ATEN_CPU_CAPABILITY=default and
    # one thread); twice that
    assert x.shape == (2, 3, 3, 224, 224)
    assert_close_rounding(x, torch.zeros_like(x), 8, 1.0)
    y = preprocess_for_i3d(np.full((1, 2, 8, 8, 3), 255, dtype=np.uint8))
    assert_close_rounding(y, torch.ones_like(y), 8, 1.0)


def test_compute_fvd_with_scripted_stand_in(i3d_file):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (6, 4, 16, 16, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(0, 60, real.shape), 0, 255).astype(np.uint8)
    detector = load_i3d(i3d_file)
    features = i3d_features(real, detector, batch_size=4)
    assert features.shape == (6, 9)
    assert features[:, 6].min() >= -1 and features[:, 7].max() <= 1 and np.all(features[:, 8] == 224 * 1000 + 4)
    # 6 videos, 9 features: a singular covariance (zero eigenvalues round to sqrt(delta), see `_fd_atol`)
    cov = feature_statistics(features)[1]
    assert compute_fvd(real, real, i3d_file) <= _fd_atol(cov, cov)
    # Features are per video: another batching gives them up to the float32 rounding of the per-video reductions
    # (cascade sums of 4 x 224 x 224 values in [-1, 1]; the size feature is exact).
    fake_features = i3d_features(fake, detector, batch_size=4)
    scale = np.maximum(np.abs(fake_features), 1.0)
    depth = log2_length(4 * 224 * 224) + 2
    assert_close_rounding(i3d_features(fake, detector), fake_features, depth, scale, torch.float32)
    # compute_fvd is features, statistics and distance: on the same batches, the same numbers
    expected = frechet_distance(*feature_statistics(features), *feature_statistics(fake_features))
    fvd = compute_fvd(real, fake, i3d_file, batch_size=4)
    assert fvd > 1e-3 and fvd == expected


def test_compute_fvd_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript\.pt.*dropbox"):
        compute_fvd(np.zeros((2, 4, 8, 8, 3)), np.zeros((2, 4, 8, 8, 3)), tmp_path / "nope.pt")
