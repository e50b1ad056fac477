"""The paper preset as 2016 computed it, and the fidelity audit's fixes (issue 25 item 4): Keras 1's BatchNorm and
initial weights as named choices, 2016 librosa's Δ/ΔΔ, one MTAT split named the same everywhere, 10 paper cells in
index.md, the search keeping the paper's dropout, a recipe's cell fields with the log-mel variant."""

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from torch import nn

import fcn.preprocess
from fcn.config import PAPER_MTAT_SPLIT, PRESETS, RunConfig
from fcn.frontends import FrontEnd, LfilterDelta
from fcn.models import FCN
from fcn.run_store import store_path
from harness import paper
from harness.search import CELL_FIELDS, default_space, expand_trials
from harness.tables.index import write_index
from harness.tables.read import run_source
from harness.tables.summarise import Cell, paper_cells
from tests.conftest import REPO

PAPER = RunConfig(**PRESETS["paper"])


def _bns(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_paper_preset_has_keras1_batchnorm_and_init_and_the_demo_keeps_torchs():
    """Keras 1.0.6 BatchNormalization(epsilon=1e-6, momentum=0.9) and glorot_uniform kernels with zero biases, as
    the authors' Keras trained; the demo presets keep torch's defaults (its test AUC must not move)."""
    assert (PAPER.init, PAPER.bn_epsilon, PAPER.bn_momentum) == ("keras1", 1e-6, 0.1)
    torch.manual_seed(0)
    paper = FCN(3, 0.125, **PAPER.model_options)
    assert all(b.eps == 1e-6 and b.momentum == 0.1 for b in _bns(paper))
    convs = [m for m in paper.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs)
    for m in convs:  # glorot_uniform: U(±sqrt(6 / (fan_in + fan_out))), fans with the kernel area
        area = m.weight[0, 0].numel() if m.weight.dim() == 4 else 1
        bound = (6 / ((m.weight.shape[0] + m.weight.shape[1]) * area)) ** 0.5
        assert 0.8 * bound < float(m.weight.detach().abs().max()) <= bound
    demo = RunConfig()
    assert (demo.init, demo.bn_epsilon, demo.deltas) == ("torch", 1e-5, "librosa")
    torch.manual_seed(0)
    assert all(b.eps == 1e-5 for b in _bns(FCN(3, 0.125, **demo.model_options)))
    with pytest.raises(Exception, match="bn_epsilon"):
        RunConfig(bn_epsilon=0)


def _librosa_0_4_delta(data, width=9, order=1):
    """librosa.feature.delta of librosa 0.4.3 (librosa/feature/utils.py), verbatim but for the names."""
    half_length = 1 + int(width // 2)
    window = np.arange(half_length - 1.0, -half_length, -1.0)
    window /= np.sum(np.abs(window) ** 2)
    delta_x = np.pad(data, [(0, 0), (width, width)], mode="edge")
    for _ in range(order):
        delta_x = lfilter(window, 1, delta_x, axis=-1)
    return delta_x[:, -half_length - data.shape[-1] : -half_length]


def test_paper_preset_mfcc_deltas_are_2016_librosas():
    x = np.random.default_rng(0).normal(size=(30, 60)).cumsum(axis=1)
    for order in (1, 2):
        ours = LfilterDelta(9, order)(torch.from_numpy(x)).numpy()
        assert np.allclose(ours, _librosa_0_4_delta(x, 9, order), atol=1e-9)
    assert PAPER.deltas == "librosa-0.4" and PAPER.frontend.deltas == "librosa-0.4"
    assert store_path(PAPER).name.endswith("-authors-deltas-librosa-0.4.h5")  # beside, not over, a store of others
    assert store_path(RunConfig()).name == "mtat-synth1200-folder-4s-plain-db.h5"  # the demo's name unchanged
    fe = FrontEnd("mfcc", PAPER.frontend)
    assert isinstance(fe.delta, LfilterDelta) and isinstance(fe.delta2, LfilterDelta) and fe.delta2.order == 2


def test_one_mtat_split_named_the_same_everywhere():
    """The paper preset's MTAT split is `folder`; the docs' paper-preset commands, the sbatch headers and the tables'
    provenance say so (none assumes `clean`)."""
    assert PAPER.split == PAPER_MTAT_SPLIT == "folder"
    for name, text in (("README.md", (REPO / "README.md").read_text()), ("fcn.preprocess", fcn.preprocess.__doc__)):
        for line in text.splitlines():
            if "--preset paper" in line and "mtat" in line:
                assert "--split clean" not in line, f"{name}: {line}"
    for depth in (3, 4, 5, 6, 7):
        header = (REPO / "slurm" / f"mtat_fcn{depth}.sh").read_text()
        assert f"{PAPER_MTAT_SPLIT} split, the paper preset's" in header and "clean split" not in header
    params = dict(dataset="mtat", data_root="/x", width="1.0", clip_seconds="29.12", frontend_variant="authors")
    assert "folder split" in run_source(dict(params, split="folder"))
    assert "clean split" in run_source(dict(params, split="clean"))
    assert "Choi's split" in run_source(dict(params, dataset="msd"))


def test_index_counts_the_papers_ten_cells(tmp_path):
    keys = paper_cells()
    cells = {Cell(*k).id: Cell(*k) for k in keys}
    assert len(cells) == 12  # the two tables: MTAT FCN-3..7 and MSD FCN-3..7 on mel, MTAT FCN-4 on STFT/MFCC
    text = write_index(tmp_path, "made by a test", [], cells, [], "none", 0).read_text()
    assert len(paper.PAPER_CELLS) == 10
    assert "paper cells with results (all of the training split): 0 of 10; cells beyond the paper's: 0 of 2" in text


def test_search_keeps_the_papers_dropout_and_a_recipe_names_its_log_mel():
    trials = expand_trials(default_space(PAPER), 0, 0)
    assert {t["dropout"] for t in trials} == {0.5} and len(trials) == 4
    assert len(expand_trials(default_space(RunConfig()), 0, 0)) == 8  # the demo still searches its dropout
    assert "frontend_variant" in CELL_FIELDS
