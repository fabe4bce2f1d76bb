"""The VITON-HD networks match the official state-dict layout (contract Appendix A) and run.

Each model is built once per module; forward checks run at low resolution only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitonhd_models.networks import GMM, ALIASGenerator, SegGenerator, TpsGridGen

TABLE = (
    Path(__file__).resolve().parent.parent
    / "vitonhd_models"
    / "data"
    / "official_state_dict_keys.tsv"
)

# Contract Appendix A headings: state-dict entries and trainable parameters per network.
EXPECTED_ENTRIES = {"seg": 46, "gmm": 104, "alias": 264}
EXPECTED_PARAMS = {"seg": 34_531_149, "gmm": 19_042_290, "alias": 100_498_115}
FACTORIES = {"seg": SegGenerator, "gmm": GMM, "alias": ALIASGenerator}


def _official_table() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    table: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    lines = TABLE.read_text().splitlines()
    assert lines[0].split("\t") == ["network", "key", "shape"], "unexpected TSV header"
    for line in lines[1:]:
        network, key, shape = line.split("\t")
        dims = tuple(int(d) for d in shape.split(",")) if shape else ()
        table.setdefault(network, []).append((key, dims))
    return table


@pytest.fixture(scope="module")
def official() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    return _official_table()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: factory() for name, factory in FACTORIES.items()}


def test_table_row_counts_match_contract(official):
    assert {name: len(rows) for name, rows in official.items()} == EXPECTED_ENTRIES


def _first_differences(expected, got, limit: int = 5) -> str:
    lines = []
    for i in range(max(len(expected), len(got))):
        e = expected[i] if i < len(expected) else None
        g = got[i] if i < len(got) else None
        if e != g:
            lines.append(f"  entry {i}: official {e} != ours {g}")
            if len(lines) >= limit:
                break
    missing = sorted({k for k, _ in expected} - {k for k, _ in got})[:limit]
    unexpected = sorted({k for k, _ in got} - {k for k, _ in expected})[:limit]
    return "\n".join(
        lines + [f"  missing keys: {missing}", f"  unexpected keys: {unexpected}"]
    )


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_matches_official_keys_and_shapes(name, models, official):
    expected = official[name]
    got = [(k, tuple(v.shape)) for k, v in models[name].state_dict().items()]
    assert got == expected, (
        f"{name}: state dict differs from the official layout\n"
        + _first_differences(expected, got)
    )


@pytest.mark.parametrize("name", list(FACTORIES))
def test_trainable_parameter_count(name, models):
    assert sum(p.numel() for p in models[name].parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_saved_state_dict_loads_strictly_into_fresh_instance(name, models, tmp_path):
    path = tmp_path / f"{name}.pth"
    torch.save(models[name].state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = FACTORIES[name]()
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_shaped_state_dict_loads_strictly(models, official):
    """A state dict built only from the table (what the released file should hold) loads strictly."""
    state = {k: torch.zeros(shape, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
             for k, shape in official["gmm"]}  # fmt: skip
    GMM().load_state_dict(state, strict=True)


def test_tps_buffers_not_in_state_dict(models):
    gmm = models["gmm"]
    buffer_names = {name for name, _ in gmm.gridGen.named_buffers()}
    assert buffer_names, "TpsGridGen should hold (non-persistent) buffers"
    assert gmm.gridGen.state_dict() == {}
    assert not [k for k in gmm.state_dict() if k.startswith("gridGen.")]


def test_alias_uses_hook_based_spectral_norm(models):
    conv = models["alias"].G_middle_0.conv_s
    assert (
        hasattr(conv, "weight_orig")
        and hasattr(conv, "weight_u")
        and hasattr(conv, "weight_v")
    )
    assert not hasattr(conv, "parametrizations")


def test_seg_forward_shape_and_range(models):
    seg = models["seg"].eval()
    with torch.no_grad():
        out = seg(torch.randn(1, 21, 256, 192))
    assert out.shape == (1, 13, 256, 192)
    assert out.min() >= 0 and out.max() <= 1


def test_gmm_forward_identity_grid_and_shapes(models):
    gmm = models["gmm"].eval()
    with torch.no_grad():
        theta, grid = gmm(torch.randn(1, 7, 256, 192), torch.randn(1, 3, 256, 192))
        assert theta.shape == (1, 50) and theta.abs().max() <= 1
        assert grid.shape == (1, 1024, 768, 2)
        # Zero offsets leave the control points in place: the TPS grid is the plain [-0.9, 0.9] grid.
        ident = gmm.gridGen(torch.zeros(1, 50))[0]
    xs = torch.linspace(-0.9, 0.9, 768)
    ys = torch.linspace(-0.9, 0.9, 1024)
    assert torch.allclose(ident[..., 0], xs.expand(1024, 768), atol=1e-5)
    assert torch.allclose(ident[..., 1], ys[:, None].expand(1024, 768), atol=1e-5)


def test_gmm_theta_layout_x_offsets_first():
    """theta[:, :N] moves x, theta[:, N:] moves y; a uniform shift moves the whole grid."""
    gmm_grid = TpsGridGen(load_height=64, load_width=48, grid_size=5)
    shift = torch.zeros(1, 50)
    shift[:, :25] = 0.1
    moved = gmm_grid(shift) - gmm_grid(torch.zeros(1, 50))
    assert torch.allclose(moved[..., 0], torch.full((64, 48), 0.1), atol=1e-5)
    assert torch.allclose(moved[..., 1], torch.zeros(64, 48), atol=1e-5)


def test_alias_small_forward():
    """ALIAS at 256x128 (latent 2x1 with 'most'); same widths as the full model, tiny spatial size."""
    torch.manual_seed(0)
    alias = ALIASGenerator(load_height=256, load_width=128).eval()
    misalign = (torch.rand(1, 1, 256, 128) > 0.5).float()
    with torch.no_grad():
        out = alias(
            torch.randn(1, 9, 256, 128),
            torch.rand(1, 7, 256, 128),
            torch.rand(1, 8, 256, 128),
            misalign,
        )
    assert out.shape == (1, 3, 256, 128)
    assert out.min() >= -1 and out.max() <= 1


def test_the_model_package_does_not_import_prefect():
    """vitonhd_models is plain PyTorch: usable in a notebook or another trainer without Prefect."""
    import subprocess
    import sys

    code = (
        "import sys; import vitonhd_models.train, vitonhd_models.checkpoints, vitonhd_models.metrics; "
        "print('prefect' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", "a vitonhd_models module imports prefect"


def _tps_reference_float32(theta: torch.Tensor, height: int, width: int, grid_size: int = 5) -> torch.Tensor:
    """The official TPS forward written out from contract §1.9 in its own layout: every tensor float32,
    the control points and the grid numpy's float64 linspace rounded to float32, L = [[K, P], [P^T, 0]]
    inverted in float32, W = Li[:N, :N] @ Q and A = Li[N:, :N] @ Q by bmm, U = d2 log d2 (d2 = 0 -> 1) on
    (b, H, W, 1, N) tensors, and each coordinate ((a0 + a1 x) + a2 y) + sum over N of W U."""
    n, batch = grid_size * grid_size, theta.shape[0]
    coords = np.linspace(-0.9, 0.9, grid_size)
    p_y_np, p_x_np = np.meshgrid(coords, coords)  # the official's swapped outputs
    p_x = torch.tensor(p_x_np, dtype=torch.float32).reshape(n, 1)
    p_y = torch.tensor(p_y_np, dtype=torch.float32).reshape(n, 1)
    d2 = (p_x - p_x.t()) ** 2 + (p_y - p_y.t()) ** 2
    d2[d2 == 0] = 1
    affine = torch.cat((torch.ones(n, 1), p_x, p_y), 1)
    system = torch.cat((torch.cat((d2 * torch.log(d2), affine), 1), torch.cat((affine.t(), torch.zeros(3, 3)), 1)), 0)
    l_inv = torch.linalg.inv(system).unsqueeze(0)
    grid_x_np, grid_y_np = np.meshgrid(np.linspace(-0.9, 0.9, width), np.linspace(-0.9, 0.9, height))
    x = torch.tensor(grid_x_np, dtype=torch.float32)[None, :, :, None]  # (1, H, W, 1)
    y = torch.tensor(grid_y_np, dtype=torch.float32)[None, :, :, None]
    xs_n = x.unsqueeze(4).expand(1, height, width, 1, n)
    ys_n = y.unsqueeze(4).expand(1, height, width, 1, n)
    d2 = torch.pow(xs_n - p_x.reshape(1, 1, 1, 1, n), 2) + torch.pow(ys_n - p_y.reshape(1, 1, 1, 1, n), 2)
    d2[d2 == 0] = 1
    u = d2 * torch.log(d2)
    out = []
    for q, base in ((theta[:, :n], p_x), (theta[:, n:], p_y)):
        q = q.unsqueeze(2) + base.expand(batch, n, 1)
        w = torch.bmm(l_inv[:, :n, :n].expand(batch, n, n), q)  # (b, N, 1)
        a = torch.bmm(l_inv[:, n:, :n].expand(batch, 3, n), q)  # (b, 3, 1)
        w = w.unsqueeze(3).unsqueeze(4).transpose(1, 4).repeat(1, height, width, 1, 1)  # (b, H, W, 1, N)
        a = a.unsqueeze(3).unsqueeze(4).transpose(1, 4).repeat(1, height, width, 1, 1)  # (b, H, W, 1, 3)
        out.append(a[..., 0] + a[..., 1] * x.expand(batch, -1, -1, -1) + a[..., 2] * y.expand(batch, -1, -1, -1)
                   + torch.sum(w * u.expand_as(w), 4))
    return torch.cat(out, 3)


@pytest.mark.parametrize("scale", [0.02, 0.3], ids=["small-offsets", "large-offsets"])
def test_the_tps_grid_is_the_official_float32_computation(scale):
    """Bit for bit: not the float64 precomputation this module once made (3e-6..5e-5 off the official grid,
    which moves the warped cloth's pixels and the final image by a level here and there)."""
    theta = torch.randn(2, 50, generator=torch.Generator().manual_seed(5)) * scale
    grid = TpsGridGen(load_height=64, load_width=48)(theta)
    reference = _tps_reference_float32(theta, 64, 48)
    assert grid.dtype == torch.float32 and grid.shape == reference.shape == (2, 64, 48, 2)
    error = (grid - reference).abs().max().item()
    assert torch.equal(grid, reference), f"the TPS grid is {error:.2e} off the official float32 computation"
