"""Everyday training code checked as it trains: lazy caches, checkpointing, old parametrizations, sparse gradients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.utils.prune
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradcheck_service import check
from tests.fixtures import force_field, hf_models, lazy_rotary


@pytest.fixture
def rotation() -> Iterator[None]:
    yield
    lazy_rotary.ROTATION = "right"


def _compared_everything(report) -> bool:  # type: ignore[no-untyped-def]
    gc = report.gradient_check
    return gc.dtype == "float64" and all(not t.unused and t.coordinates_checked + t.probes > 0 for t in gc.parameters)


def test_a_lazily_built_rotary_cache_is_part_of_every_evaluation() -> None:
    model, x = lazy_rotary.build()
    report = check(model, x, health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)
    # the user's module is left as it was: no cache filled behind its back, float32 throughout
    assert model.rotary.cached_freqs_seq_len == 0 and model.rotary.cached_freqs.numel() == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_health_and_memory_passes_leave_a_lazily_built_cache_as_it_was() -> None:
    """Those passes run the user's own model: a cache they fill must not stay half filled (its length says
    filled, its buffer is put back empty) or the next training step reads zero angles."""
    model, x = lazy_rotary.build()
    report = check(model, x)  # gradient health and memory included
    assert report.verdict == "passed" and report.gradient_norms is not None and report.memory is not None
    assert model.rotary.cached_freqs_seq_len == 0 and model.rotary.cached_freqs.numel() == 0
    model.rotary(x.shape[1])  # the first real step still builds its cache
    assert model.rotary.cached_freqs_seq_len == x.shape[1] and bool(model.rotary.cached_freqs.abs().sum() > 0)


def test_a_detach_inside_the_rotation_fails_and_names_the_attention_module(rotation: None) -> None:
    lazy_rotary.ROTATION = "detached"
    model, x = lazy_rotary.build()
    model.rotary(x.shape[1])  # the cache already filled, as after a first training step
    report = check(model, x, health=False, memory=False)
    assert report.verdict == "failed"
    assert report.localization.faulty_modules == [""]  # the attention (the root here) applies the rotation
    gc = report.gradient_check
    assert "input[0]" in {t.name for t in gc.parameters + gc.inputs if not t.passed}


class CheckpointedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.block, self.inp(x), use_reentrant=True))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_block_under_reentrant_checkpointing_is_checked_as_it_trains() -> None:
    torch.manual_seed(0)
    report = check(CheckpointedBlock(), torch.randn(3, 4), health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)


class FrozenEmbeddingBeforeCheckpoint(nn.Module):
    """Why ``enable_input_require_grads`` exists: a reentrant checkpoint whose inputs do not require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6).requires_grad_(False)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.block, self.embed(ids), use_reentrant=True))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_frozen_embedding_before_a_reentrant_checkpoint_fails_and_names_the_block() -> None:
    torch.manual_seed(0)
    report = check(FrozenEmbeddingBeforeCheckpoint(), torch.randint(0, 10, (3, 5)), health=False, memory=False)
    assert report.verdict == "failed"
    failing = {t.name for t in report.gradient_check.parameters if not t.passed}
    assert failing == {"block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias"}
    assert report.localization.faulty_modules == ["block"]
    (block,) = [m for m in report.localization.modules if m.module == "block"]
    assert "no gradient reached its inputs" in (block.detail or "")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_transformers_model_with_reentrant_gradient_checkpointing_passes() -> None:
    model, inputs, loss_fn = hf_models.gpt2()
    model.inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    report = check(model, inputs, loss_fn, health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
def test_old_style_weight_norm_and_pruned_linears_are_checked() -> None:
    torch.manual_seed(0)
    pruned = nn.Linear(5, 5)
    torch.nn.utils.prune.l1_unstructured(pruned, "weight", amount=0.4)
    model = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 5)), nn.Tanh(), pruned, nn.Tanh(), nn.Linear(5, 2))
    report = check(model, torch.randn(3, 4), health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    names = {t.name for t in report.gradient_check.parameters}
    assert {"0.weight_g", "0.weight_v", "2.weight_orig"} <= names
    assert _compared_everything(report)


@pytest.mark.parametrize("spectral_norm", [nn.utils.spectral_norm, nn.utils.parametrizations.spectral_norm],
                         ids=["hook", "parametrization"])
def test_spectral_norm_in_train_mode_is_checked_with_its_power_iteration_held(spectral_norm) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    normed = spectral_norm(nn.Linear(6, 6))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), normed, nn.Tanh(), nn.Linear(6, 2)).train()
    vectors = {k: v.clone() for k, v in normed.state_dict().items() if k.endswith(("_u", "_v"))}
    report = check(model, torch.randn(3, 4), health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)
    assert any("power-iteration vectors are held" in note for note in report.warnings)
    # the user's model still iterates in train mode, from the vectors it had
    assert all(m.training for m in model.modules())
    assert all(torch.equal(normed.state_dict()[k], v) for k, v in vectors.items()) and vectors


class SparseEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(10, 4, sparse=True)
        self.bag = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(idx).sum(1) + self.bag(idx))


def test_sparse_embedding_gradients_are_compared_as_dense() -> None:
    torch.manual_seed(0)
    report = check(SparseEmbeddings(), torch.randint(0, 10, (3, 5)))
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)


class CTCLoss(nn.Module):
    def __init__(self, inner: nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.labels = inner, labels

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.inner(input_values=audio, labels=self.labels).loss


def test_wav2vec2_in_train_mode_with_specaugment_is_checked_as_it_trains() -> None:
    """Its feature encoder sets requires_grad on its input's view itself; SpecAugment draws its masks with NumPy."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, mask_time_prob=0.3, mask_time_length=2, mask_feature_prob=0.2,
        mask_feature_length=2, layerdrop=0.0)
    torch.manual_seed(0)
    model = CTCLoss(Wav2Vec2ForCTC(config).train(), torch.randint(1, 12, (2, 5)))
    report = check(model, torch.randn(2, 400))
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert report.gradient_check.reproducible and _compared_everything(report)
    assert any("sets requires_grad" in note for note in report.warnings)


@pytest.fixture
def create_graph() -> Iterator[None]:
    yield
    force_field.CREATE_GRAPH = True


def test_a_force_model_differentiating_inside_its_forward_is_checked() -> None:
    report = check(*force_field.build())
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert _compared_everything(report)
    assert all(t.coordinates_checked + t.probes > 0 for t in report.gradient_check.inputs)


def test_forces_without_create_graph_fail_and_name_the_force_module(create_graph: None) -> None:
    force_field.CREATE_GRAPH = False
    report = check(*force_field.build())
    assert report.verdict == "failed"
    assert report.localization.faulty_modules == [""]  # the root computes the forces
    assert any("gradient health and memory not measured" in note for note in report.warnings)
