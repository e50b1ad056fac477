"""FCN-3..7: the paper's parameter counts, shapes on every input, and the model card."""

import subprocess
import sys

import pytest
import torch

from fcn.models import DEPTHS, FCN, forward_macs, n_params

# PAPER.md, Architecture: conv weights + biases, BN gamma/beta, output layer (computed from the table)
PAPER_PARAMS = {3: 7_631_538, 4: 17_365_938, 5: 25_183_026, 6: 27_232_050, 7: 28_283_698}
PAPER_GMACS = {3: 2.85, 4: 10.01, 5: 8.88}


@pytest.mark.parametrize("depth", DEPTHS)
def test_parameter_count_equals_paper(depth):
    assert n_params(FCN(depth)) == PAPER_PARAMS[depth]


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_multiply_adds_equal_paper(depth):
    assert round(forward_macs(FCN(depth), 96, 1366) / 1e9, 2) == PAPER_GMACS[depth]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("rows", [96, 128, 90])
def test_logits_shape_on_every_input_and_demo_length(depth, rows):
    model = FCN(depth, width=0.125).eval()
    for frames in (95, 189):  # 2 s and 4 s demo clips: smaller than the paper's pools, still well defined
        assert model(torch.randn(2, 1, rows, frames)).shape == (2, 50)


def test_paper_scale_forward_reaches_one_by_one():
    model = FCN(4).eval()
    with torch.no_grad():
        h = model.features[:-1](torch.randn(1, 1, 96, 1366))
    # PAPER.md: FCN-4's third block ends at 4×8 before the last (global = MP(4,8)) pool
    assert h.shape[-2:] == (4, 8)


def test_unknown_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown depth 8"):
        FCN(8)


def test_model_card_cli():
    out = subprocess.run([sys.executable, "-m", "fcn.models"], capture_output=True, text=True, check=True).stdout
    assert "| FCN-4 | mel | 1×96×1366 | 17,365,938 | 10.01 G |" in out
    assert out.count("| FCN-") == 15  # 5 depths × 3 inputs
    assert "bf16 autocast on CUDA [D: our speed choice" in out and "`--amp off` trains in fp32" in out
