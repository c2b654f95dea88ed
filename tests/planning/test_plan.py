"""Self-configuration: fingerprints and plans for isotropic, anisotropic and CT data, within a memory budget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medsight.core.errors import ConfigError, InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume
from medsight.planning import case_facts, estimate_memory_gb, fingerprint, make_plan, target_spacing, topology


def _case(spacing, shape, *, channels=1, seed=0, ct=False, blobs=1):
    rng = np.random.default_rng(seed)
    if ct:
        image = rng.normal(40, 30, size=(channels, *shape)).round().astype(np.int16)
        image[:, :, :3] = -1000  # air at one side
    else:
        image = rng.normal(300, 50, size=(channels, *shape)).astype(np.float32)
        image[:, :, : shape[1] // 4] = 0  # background outside the body
    label = np.zeros((1, *shape), np.uint8)
    z, y, x = (s // 2 for s in shape)
    label[0, max(z - 2, 0) : z + 2, y - 4 : y + 4, x - 4 : x + 4] = 1
    if blobs > 1:
        label[0, max(z - 2, 0) : z + 2, 2:5, 2:5] = 1
    geometry = Geometry(spacing=spacing)
    return case_facts(Volume(image, geometry), Volume(label, geometry), seed=seed)


def test_an_isotropic_data_set_gets_its_median_spacing_and_cubic_kernels():
    facts = [_case((1.0, 1.0, 1.0), (64, 80, 80), seed=s) for s in range(3)]
    facts.append(_case((1.2, 1.2, 1.2), (60, 70, 70), seed=3))
    plan = make_plan(fingerprint(facts), out_channels=2, memory_gb=4)
    assert plan.spacing == pytest.approx((1.0, 1.0, 1.0)) and plan.anisotropic_axis is None
    assert all(k == (3, 3, 3) for k in plan.network.kernels[:-1])
    assert plan.network.strides[1] == (2, 2, 2)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, plan.network.divisor, strict=True))
    assert max(plan.patch_size) <= 80 and plan.estimated_memory_gb <= 4
    assert plan.normalization[0].scheme == "zscore"


def test_a_thick_slice_data_set_keeps_its_slices_and_pools_in_plane_first():
    spacings = [(10.0, 1.5, 1.5), (8.0, 1.4, 1.4), (9.0, 1.6, 1.6), (6.5, 1.5, 1.5), (10.0, 1.5, 1.5)]
    facts = [_case(sp, (10, 96, 96), seed=i) for i, sp in enumerate(spacings)]
    found = fingerprint(facts)
    spacing, thick = target_spacing(found)
    assert thick == 0 and spacing[0] == pytest.approx(np.percentile([s[0] for s in spacings], 10))
    assert spacing[1:] == pytest.approx((1.5, 1.5))
    plan = make_plan(found, out_channels=4, memory_gb=4)
    assert plan.network.kernels[0] == (1, 3, 3) and plan.network.strides[1] == (1, 2, 2)
    assert plan.patch_size[0] <= 12 and plan.patch_size[1] >= 64


def test_ct_is_clipped_to_its_foreground_percentiles_and_z_scored_with_data_set_statistics():
    facts = [_case((1.0, 0.8, 0.8), (32, 48, 48), ct=True, seed=s) for s in range(3)]
    plan = make_plan(fingerprint(facts, modality="ct"), out_channels=2, memory_gb=2)
    norm = plan.normalization[0]
    assert norm.scheme == "ct" and norm.clip[0] < 40 < norm.clip[1]
    assert norm.mean == pytest.approx(40, abs=3) and norm.std == pytest.approx(30, abs=3)


def test_label_facts_decide_postprocessing():
    one = [_case((1.0, 1.0, 1.0), (32, 48, 48), seed=s) for s in range(4)]
    two = [_case((1.0, 1.0, 1.0), (32, 48, 48), seed=s, blobs=2) for s in range(4)]
    assert make_plan(fingerprint(one), out_channels=2, memory_gb=2).keep_largest == [1]
    assert make_plan(fingerprint(two), out_channels=2, memory_gb=2).keep_largest == []
    found = fingerprint(one)
    assert found.median_volume_ml[1] == pytest.approx(4 * 8 * 8 / 1000)
    # specks below half the smallest real foreground region (5th percentile) are removed at prediction
    assert make_plan(found, out_channels=2, memory_gb=2).min_component_ml == pytest.approx(0.5 * 0.256)
    assert make_plan(fingerprint(two), out_channels=2, memory_gb=2).min_component_ml == pytest.approx(0.5 * 0.036)


def test_smaller_budgets_give_smaller_patches_and_an_impossible_one_is_refused():
    found = fingerprint([_case((1.0, 1.0, 1.0), (128, 128, 128), channels=4, seed=s) for s in range(2)])
    sizes = []
    for budget in (16, 4, 1.5):
        plan = make_plan(found, out_channels=4, memory_gb=budget)
        assert plan.estimated_memory_gb <= budget
        sizes.append(np.prod(plan.patch_size))
    assert sizes[0] > sizes[1] > sizes[2]
    with pytest.raises(ConfigError, match="less than the training process itself takes"):
        make_plan(found, out_channels=4, memory_gb=0.5)
    with pytest.raises(ConfigError, match="cannot hold a training batch"):
        make_plan(found, out_channels=4, memory_gb=0.7001, base_filters=64)


def test_topology_rounds_the_patch_to_what_the_network_divides():
    network, patch = topology((50, 100, 37), (1.0, 1.0, 1.0), base_filters=8)
    assert all(p % d == 0 for p, d in zip(patch, network.divisor, strict=True))
    assert network.filters[0] == 8 and network.filters[1] == 16


def test_bad_cases_are_refused():
    image = Volume(np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(InputError, match="differs from the image's"):
        case_facts(image, Volume(np.zeros((1, 4, 4, 5), np.uint8)))
    with pytest.raises(InputError, match="non-integer"):
        case_facts(image, Volume(np.full((1, 4, 4, 4), 0.5, np.float32)))
    with pytest.raises(InputError, match="at least one case"):
        fingerprint([])
    with pytest.raises(InputError, match="different numbers of channels"):
        fingerprint([_case((1, 1, 1), (16, 24, 24)), _case((1, 1, 1), (16, 24, 24), channels=2)])


@pytest.mark.slow
def test_the_planned_patch_and_batch_fit_the_budget_when_measured():
    """One training step of the planned U-Net, in a fresh process: its peak RSS stays within the budget."""
    found = fingerprint([_case((1.0, 1.0, 1.0), (96, 112, 112), channels=4, seed=s) for s in range(2)])
    budget = 1.6
    plan = make_plan(found, out_channels=4, memory_gb=budget, base_filters=16)
    script = textwrap.dedent(f"""
        import json, torch
        from monai.networks.nets import DynUNet
        torch.set_num_threads(2)
        net = json.loads({plan.network.model_dump_json()!r})
        model = DynUNet(3, 4, 4, net["kernels"], net["strides"], net["strides"][1:], filters=net["filters"],
                        norm_name="instance")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
        x = torch.randn({plan.batch_size}, 4, *{list(plan.patch_size)})
        y = torch.randint(0, 4, ({plan.batch_size}, *{list(plan.patch_size)}))
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's peak over exec)
        peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print(int(peak.split()[1]) / 2**20)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    peak_gb = float(result.stdout.strip().splitlines()[-1])
    assert peak_gb <= budget, (peak_gb, plan.patch_size, plan.batch_size, plan.estimated_memory_gb)
    assert peak_gb >= 0.5 * (plan.estimated_memory_gb - 0.7)  # the estimate is not wildly pessimistic either
    assert estimate_memory_gb(plan.network, plan.patch_size, plan.batch_size, 4, 4) == pytest.approx(
        plan.estimated_memory_gb, abs=0.01
    )


def test_plans_round_trip_and_overrides_are_validated(tmp_path):
    from medsight.engine.plan import load_plan, save_plan

    plan = make_plan(fingerprint([_case((1, 1, 1), (48, 64, 64), seed=s) for s in range(2)]), out_channels=2,
                     memory_gb=2)  # fmt: skip
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan
    divisor = plan.network.divisor
    smaller = load_plan(path, [f"patch_size=[{divisor[0]}, {divisor[1]}, {divisor[2]}]", "epochs=3"])
    assert smaller.patch_size == divisor and smaller.epochs == 3
    with pytest.raises(ConfigError, match="must be a multiple of the network's divisor"):
        load_plan(path, [f"patch_size=[{divisor[0] + 1}, {divisor[1]}, {divisor[2]}]"])
    with pytest.raises(ConfigError, match="did you mean 'patch_size'"):
        load_plan(path, ["patch_sise=[8,8,8]"])
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(ConfigError, match="make the plan again"):
        load_plan(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a plan"):
        load_plan(path)


@pytest.mark.slow
def test_medsight_plan_on_the_cardiac_phantom_uses_both_frames(tmp_path):
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from medsight.data.phantoms import make_phantom

    root = make_phantom("cardiac-function", tmp_path / "heart", cases=3, seed=0)
    result = CliRunner().invoke(app, ["plan", "--data", str(root), "--out", str(tmp_path / "p.json"),
                                      "--memory-gb", "3", "--set", "epochs=5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "6 labelled MR images" in result.output and "axis z kept thick" in result.output
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["epochs"] == 5 and plan["anisotropic_axis"] == 0 and plan["fingerprint"]["labels"] == [1, 2, 3]
    bad = CliRunner().invoke(app, ["plan", "--data", str(root), "--out", str(tmp_path / "q.json"), "--memory-gb", "0"])
    assert bad.exit_code != 0 and "--memory-gb must be positive" in bad.output


def test_a_patch_too_small_for_any_pooling_is_refused():
    with pytest.raises(ConfigError, match="too small for a U-Net"):
        topology((6, 6, 6), (1.0, 1.0, 1.0))
