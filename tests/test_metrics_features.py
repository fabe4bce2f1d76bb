"""Feature-based metrics: LPIPS (net-lin, AlexNet), the Fréchet distance and the FID accumulator.

No real weights are used (nothing may be downloaded): the fixtures save randomly initialised torchvision
AlexNet / Inception v3 state dicts and random LPIPS linear weights to temporary files. That checks the
loading, the arithmetic and the invariants, not the published values. Inception at 299x299 costs about a
second per image on a CPU, so its features are computed once per module, for three images.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image
from torch import nn

from vitonhd_models.metrics import (
    FID,
    LPIPS,
    InceptionFeatures,
    frechet_distance_from_features,
    lpips_distance,
)

LPIPS_CHANNELS = (64, 192, 384, 256, 256)


def _lin_state(weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"lin{i}.model.1.weight": w for i, w in enumerate(weights)}


def _image(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metric_weights")


@pytest.fixture(scope="module")
def alexnet_path(weights_dir) -> str:
    """A random torchvision AlexNet state dict: real `features.*`, plus a stand-in `classifier.*` entry
    (the metric ignores the classifier; the real one is 230 MB)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        features = torchvision.models.alexnet(weights=None).features
    features = features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)
    path = weights_dir / "alexnet.pth"
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def lin_path(weights_dir) -> str:
    torch.manual_seed(1)
    path = weights_dir / "lin.pth"
    torch.save(_lin_state([torch.rand(1, c, 1, 1) for c in LPIPS_CHANNELS]), path)
    return str(path)


@pytest.fixture(scope="module")
def lpips_model(alexnet_path, lin_path) -> LPIPS:
    return LPIPS(alexnet_path, lin_path)


@pytest.fixture(scope="module")
def inception_state() -> dict[str, torch.Tensor]:
    """A random torchvision inception_v3 (aux head and fc included). Kaiming-normal convs keep the
    activations O(1) through BatchNorm's default running statistics (PyTorch's default conv init lets
    them shrink to ~1e-8 over the 94 convs)."""
    torch.manual_seed(2)
    with torch.device("meta"):
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    net = net.to_empty(device="cpu")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()
    return net.state_dict()


@pytest.fixture(scope="module")
def inception_path(weights_dir, inception_state) -> str:
    path = weights_dir / "inception_v3.pth"
    torch.save(inception_state, path)
    return str(path)


@pytest.fixture(scope="module")
def inception(inception_path) -> InceptionFeatures:
    return InceptionFeatures(inception_path)


@pytest.fixture(scope="module")
def noise_images() -> list[np.ndarray]:
    return [_image(10), _image(11)]


@pytest.fixture(scope="module")
def flat_image() -> np.ndarray:
    return np.full((40, 30, 3), 200, dtype=np.uint8)


@pytest.fixture(scope="module")
def features(inception, noise_images, flat_image) -> np.ndarray:
    """Pool features of [noise 0, noise 1, flat], computed once."""
    return inception.embed([*noise_images, flat_image])


# ---------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------


def test_lpips_of_an_image_with_itself_is_zero(lpips_model):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(lpips_model(x, x.clone()), torch.zeros(2)), "LPIPS(x, x) must be exactly 0"
    img = _image(0, (70, 50))
    assert lpips_distance(lpips_model, img, img.copy()) == 0.0


def test_lpips_is_positive_and_symmetric(lpips_model):
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    d_xy, d_yx = lpips_model(x, y), lpips_model(y, x)
    assert d_xy.shape == (2,), f"expected one distance per pair, got shape {tuple(d_xy.shape)}"
    assert (d_xy > 0).all(), f"different images must be at a positive distance, got {d_xy}"
    torch.testing.assert_close(d_xy, d_yx, msg="LPIPS must be symmetric")
    a, b = _image(1, (70, 50)), _image(2, (70, 50))
    assert lpips_distance(lpips_model, a, b) == pytest.approx(lpips_distance(lpips_model, b, a))


def test_lpips_matches_a_hand_computed_relu1_term(alexnet_path, weights_dir):
    """Linear weights 1 on relu1 and 0 elsewhere: the distance is the spatial mean of the squared
    difference of the unit-normalised relu1 features, with the published scaling layer applied first."""
    lin = [torch.zeros(1, c, 1, 1) for c in LPIPS_CHANNELS]
    lin[0] = torch.ones(1, LPIPS_CHANNELS[0], 1, 1)
    path = weights_dir / "lin_relu1_only.pth"
    torch.save(_lin_state(lin), path)
    model = LPIPS(alexnet_path, str(path))

    torch.manual_seed(4)
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    alexnet = torchvision.models.alexnet(weights=None)
    state = torch.load(alexnet_path, weights_only=True)
    alexnet.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if "features" in k})
    shift = torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        fx = torch.relu(alexnet.features[0]((x - shift) / scale))
        fy = torch.relu(alexnet.features[0]((y - shift) / scale))
    nx, ny = fx / (fx.norm(dim=1, keepdim=True) + 1e-10), fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
    expected = ((nx - ny) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(model(x, y)[0], expected)


def test_lpips_distance_resizes_to_128_with_pil_bilinear(lpips_model):
    a, b = _image(5, (256, 192)), _image(6, (256, 192))
    small = [np.asarray(Image.fromarray(i).resize((128, 128), Image.BILINEAR)) for i in (a, b)]
    assert lpips_distance(lpips_model, a, b) == pytest.approx(lpips_distance(lpips_model, *small), rel=1e-6)


def test_lpips_distance_rejects_mismatched_images(lpips_model):
    with pytest.raises(ValueError, match="differ in shape"):
        lpips_distance(lpips_model, _image(0, (64, 64)), _image(0, (64, 48)))


def test_lpips_is_frozen_and_stays_in_eval(lpips_model):
    assert not any(p.requires_grad for p in lpips_model.parameters()), "LPIPS weights must be frozen"
    lpips_model.train()
    assert not lpips_model.training and not any(m.training for m in lpips_model.modules())


def test_lpips_rejects_a_file_that_is_not_alexnet(weights_dir, lin_path):
    path = weights_dir / "not_alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3), "head.bias": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=f"{path}.*AlexNet.*missing"):
        LPIPS(str(path), lin_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("lin4.model.1.weight"), "missing"),
        (lambda s: s.update({"lin2.model.1.weight": torch.rand(1, 256, 1, 1)}), "wrong shape"),
        (lambda s: s.update({"lin5.model.1.weight": torch.rand(1, 8, 1, 1)}), "unexpected"),
        (lambda s: s.update({"lin1.model.1.weight": -torch.rand(1, 192, 1, 1)}), "negative"),
    ],
    ids=["missing", "shape", "unexpected", "negative"],
)
def test_lpips_rejects_bad_linear_weights(weights_dir, alexnet_path, change, message):
    state = _lin_state([torch.rand(1, c, 1, 1) for c in LPIPS_CHANNELS])
    change(state)
    path = weights_dir / f"bad_lin_{message.replace(' ', '_')}.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        LPIPS(alexnet_path, str(path))


def test_lpips_rejects_a_file_that_is_no_state_dict(weights_dir, alexnet_path):
    path = weights_dir / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{path} is not a PyTorch state dict"):
        LPIPS(alexnet_path, str(path))


# ---------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------

# Fréchet distance: the identity offset added to both covariances when sqrtm of their product is not
# finite, and the largest imaginary part on the diagonal of that sqrtm still treated as rounding
# (the values pytorch-fid uses).
FRECHET_EPS = 1e-6
FRECHET_IMAG_TOL = 1e-3


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The reference `frechet_distance_from_features` is checked against (pytorch-fid's formula): the
    Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2),
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2)).

    sqrtm is scipy's. When it is not finite (singular covariances), eps * I (FRECHET_EPS) is added to
    both covariances and it is retried; imaginary parts from rounding are dropped, and ValueError is
    raised when one on the diagonal exceeds FRECHET_IMAG_TOL.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"need means (d,) and covariances (d, d) of one d, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * FRECHET_EPS
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        largest = float(np.abs(np.diagonal(covmean).imag).max())
        if largest > FRECHET_IMAG_TOL:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary diagonal part of {largest:.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))



def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    sigma = a @ a.T + np.eye(4)
    mu = rng.standard_normal(4)
    assert frechet_distance(mu, np.eye(4), mu, np.eye(4)) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_shifted_means_is_the_squared_shift():
    # Identity covariances: tr I + tr I - 2 tr sqrt(I) = 0, so only |mu1 - mu2|^2 = 1 + 4 = 5 remains.
    d = frechet_distance(np.zeros(4), np.eye(4), np.array([1.0, 2.0, 0.0, 0.0]), np.eye(4))
    assert d == pytest.approx(5.0)


def test_frechet_distance_of_diagonal_covariances_is_hand_checked():
    # diag(1, 4) vs diag(4, 1): traces 5 + 5, sqrt(product) = diag(2, 2) with trace 4: 10 - 2 * 4 = 2.
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([4.0, 1.0])) == (
        pytest.approx(2.0)
    )


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("n", [5, 40], ids=["fewer_samples_than_dims", "more_samples_than_dims"])
def test_frechet_from_features_matches_the_sqrtm_formula(n):
    rng = np.random.default_rng(n)
    x1 = rng.standard_normal((n, 8))
    x2 = rng.standard_normal((n + 3, 8)) * 1.5 + 0.3
    stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (x1, x2)]
    expected = frechet_distance(*stats[0], *stats[1])
    assert frechet_distance_from_features(x1, x2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_features(x1, x1) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# Inception features and FID
# ---------------------------------------------------------------------------------------------------


def test_inception_features_are_2048_d_pool_features(features, inception):
    assert features.shape == (3, 2048), f"expected (3, 2048) features, got {features.shape}"
    assert np.isfinite(features).all() and features.std() > 0, "features must be finite and informative"
    assert not any(p.requires_grad for p in inception.parameters()), "Inception weights must be frozen"
    inception.train()
    assert not any(m.training for m in inception.modules()), "Inception must stay in eval mode"


def test_inception_loads_a_state_dict_without_batch_counters(weights_dir, inception_state):
    path = weights_dir / "inception_no_counters.pth"
    torch.save({k: v for k, v in inception_state.items() if "num_batches_tracked" not in k}, path)
    InceptionFeatures(str(path))


def test_inception_rejects_a_file_that_is_not_inception(weights_dir, alexnet_path):
    with pytest.raises(ValueError, match=f"{alexnet_path}.*Inception v3.*missing"):
        InceptionFeatures(alexnet_path)


def test_fid_of_a_set_against_itself_is_zero_and_grows_for_another_set(inception, features):
    noise, mixed = features[:2], features[[0, 2]]  # mixed: one shared noise image, one flat image
    same = FID(inception)
    same.update_features(noise, noise)
    other = FID(inception)
    other.update_features(noise, mixed)
    fid_same, fid_other = same.compute(), other.compute()
    assert fid_same == pytest.approx(0.0, abs=1e-9), f"FID of a set with itself should be 0, got {fid_same}"
    assert fid_other > 1e-3, f"FID against a different set should be clearly positive, got {fid_other}"


def test_fid_update_from_images_matches_the_features(inception, features, noise_images):
    fid = FID(inception, batch_size=1)
    fid.update(np.stack(noise_images), [])  # an (N, H, W, 3) batch for the real side, none generated
    fid.update_features(np.zeros((0, 2048)), features[[0, 2]])
    assert (fid.num_real, fid.num_fake) == (2, 2)
    expected = frechet_distance_from_features(features[:2], features[[0, 2]])
    assert fid.compute() == pytest.approx(expected, rel=1e-5)


def test_fid_needs_at_least_two_images_per_side(inception, features):
    fid = FID(inception)
    with pytest.raises(ValueError, match="at least 2"):
        fid.compute()
    fid.update_features(features[:1], features[:2])
    with pytest.raises(ValueError, match="at least 2 real and 2 generated images, got 1 and 2"):
        fid.compute()


def test_fid_rejects_images_that_are_not_uint8_rgb(inception):
    with pytest.raises(ValueError, match=r"fake_uint8_batch\[0\] must be a uint8"):
        FID(inception).update([_image(0)], [np.zeros((40, 30, 3), np.float32)])
