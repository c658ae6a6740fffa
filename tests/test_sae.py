"""The SAE module and its training: known answers from a planted dictionary, exact maths, exact resume."""

import json

import pytest
import torch
from helpers import no_hooks, perturbed_model

from analyses.collect import collect_activations, load_activations
from analyses.sae import SAE, SAEConfig, SAETrainConfig, ShardActivations, TensorActivations, ModelActivations, read_log, train_sae
from analyses.sae.activations import map_safetensors
from analyses.sae.sae import jumprelu_l0
from analyses.sae.training import SAETrainingError, geometric_median, load_checkpoint, lr_at


def planted_dictionary(n=30000, d=64, m=256, p=4 / 256, seed=0):
    """Activations built from a known sparse dictionary in superposition: 256 unit directions in 64
    dimensions, each active with probability 4/256 (true L0 = 4) at a magnitude in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(m, d, generator=g)
    dictionary = dictionary / dictionary.norm(dim=-1, keepdim=True)
    coefficients = (torch.rand(n, m, generator=g) < p) * (torch.rand(n, m, generator=g) + 0.5)
    return coefficients @ dictionary, dictionary, float((coefficients > 0).sum(-1).float().mean())


PLANTED = {  # architecture -> (steps, SAEConfig extras, SAETrainConfig extras)
    "standard": (700, {}, dict(l1_coefficient=1.0, l1_warmup_steps=100, resample_interval=250, dead_steps=100)),
    "topk": (700, dict(k=4), {}),
    "jumprelu": (1100, dict(jumprelu_init_threshold=0.1, jumprelu_bandwidth=0.05),
                 dict(l0_coefficient=0.1, resample_interval=250, dead_steps=100)),
}


@pytest.mark.parametrize("architecture", ["standard", "topk", pytest.param("jumprelu", marks=pytest.mark.slow)])  # jumprelu: ~12 s
def test_recovers_a_planted_dictionary(architecture, tmp_path):
    x, dictionary, true_l0 = planted_dictionary()
    steps, sae_extra, train_extra = PLANTED[architecture]
    result = train_sae(
        SAEConfig(d_in=64, d_sae=256, architecture=architecture, **sae_extra),
        SAETrainConfig(out_dir=str(tmp_path), steps=steps, batch_size=512, lr=4e-3, lr_decay_steps=steps // 5, progress=False, **train_extra),
        TensorActivations(x),
    )
    decoder = result["sae"].W_dec.detach()
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)
    mean_max_cosine = float((dictionary @ decoder.T).max(dim=1).values.mean())
    assert mean_max_cosine >= 0.9, mean_max_cosine
    l0 = result["history"][-1]["l0"]
    assert abs(l0 - true_l0) <= 1.5, (l0, true_l0)


# ----------------------------------------------------------------------------- the maths


def _sae(architecture="standard", **kw):
    extra = {"topk": dict(k=3), "jumprelu": dict(jumprelu_init_threshold=0.5)}.get(architecture, {})
    sae = SAE(SAEConfig(d_in=8, d_sae=16, architecture=architecture, **{**extra, **kw}), seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(2))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(3))
    return sae


def test_encode_decode_follow_the_formulas():
    x = torch.randn(5, 8)
    for architecture in ("standard", "topk", "jumprelu"):
        sae = _sae(architecture)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if architecture == "standard":
            expected = pre.clamp(min=0)
        elif architecture == "topk":
            keep = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, pre.topk(3, dim=-1).indices, True)
            expected = torch.where(keep, pre.clamp(min=0), torch.zeros_like(pre))
            assert ((sae.encode(x) != 0).sum(-1) <= 3).all()
        else:
            expected = torch.where(pre > 0.5, pre, torch.zeros_like(pre))
        torch.testing.assert_close(sae.encode(x), expected)
        torch.testing.assert_close(sae(x), expected @ sae.W_dec + sae.b_dec)


def test_apply_b_dec_to_input_false_skips_the_subtraction():
    sae = _sae(apply_b_dec_to_input=False)
    x = torch.randn(4, 8)
    torch.testing.assert_close(sae.encode(x), (x @ sae.W_enc + sae.b_enc).clamp(min=0))


def test_jumprelu_threshold_gradient_is_the_straight_through_estimate():
    sae = _sae("jumprelu", jumprelu_bandwidth=0.2)
    pre = torch.tensor([[0.45, 0.58, 0.9] + [0.0] * 13])  # within, within, outside the kernel around 0.5
    (sae.activation(pre).sum() + jumprelu_l0(pre, sae.threshold, 0.2).sum()).backward()
    grad_threshold = sae.log_threshold.grad / sae.threshold  # d/dthreshold = d/dlog / threshold
    # JumpReLU: -threshold/bandwidth per pre inside the kernel; L0: -1/bandwidth per pre inside
    assert float(grad_threshold[0].detach()) == pytest.approx(-0.5 / 0.2 - 1 / 0.2, rel=1e-5)
    assert float(grad_threshold[1].detach()) == pytest.approx(-0.5 / 0.2 - 1 / 0.2, rel=1e-5)
    assert float(grad_threshold[2].detach()) == 0.0


def test_hook_points_cache_and_patch_features():
    sae = _sae()
    x = torch.randn(2, 3, 8)
    out, cache = sae.run_with_cache(x)
    assert set(cache) >= {"hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"}
    torch.testing.assert_close(cache["hook_sae_acts_post"], sae.encode(x))
    zeroed = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", lambda a, hook: torch.zeros_like(a))])
    torch.testing.assert_close(zeroed, sae.b_dec.expand(2, 3, 8))
    assert no_hooks(sae)


def test_error_term_restores_the_input():
    sae = _sae("topk")
    x = torch.randn(3, 8)
    torch.testing.assert_close(sae(x, use_error_term=True), x, atol=1e-6, rtol=0)


def test_decoder_unit_norm_and_tangent_gradient():
    sae = _sae("topk")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_gradient_parallel_to_decoder_directions()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(16))


@pytest.mark.parametrize("bad, match", [
    (dict(d_in=0, d_sae=4), "d_in"),
    (dict(d_in=4, d_sae=4, architecture="gated"), "architecture"),
    (dict(d_in=4, d_sae=4, architecture="topk"), "needs k"),
    (dict(d_in=4, d_sae=4, architecture="topk", k=5), "needs k"),
    (dict(d_in=4, d_sae=4, k=2), "only for architecture='topk'"),
    (dict(d_in=4, d_sae=4, dtype="float31"), "dtype"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(**bad)


def test_wrong_width_input_is_an_error():
    with pytest.raises(ValueError, match="d_in=8"):
        _sae().encode(torch.randn(2, 7))


def test_geometric_median_known_answer():
    # corners of a square plus one far outlier on the diagonal: the outlier pulls with a unit force,
    # balanced by the two off-diagonal corners where 2*sqrt(2)(t-1)/sqrt(2(t-1)^2+2) = 1, t = 1 + 1/sqrt(3)
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [100.0, 100.0]])
    median = geometric_median(points, iterations=1000, tol=1e-12)
    torch.testing.assert_close(median, torch.full((2,), 1 + 3**-0.5, dtype=torch.float64), atol=1e-4, rtol=0)
    assert float(points.mean(0)[0]) > 20  # the mean is dragged away


def test_lr_schedule():
    cfg = SAETrainConfig(steps=100, lr=1.0, lr_warmup_steps=10, lr_decay_steps=20)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == 1.0 and lr_at(50, cfg) == 1.0
    assert lr_at(80, cfg) == pytest.approx(1.0) and lr_at(90, cfg) == pytest.approx(0.5) and lr_at(99, cfg) == pytest.approx(0.05)


# ----------------------------------------------------------------------------- sources


def test_tensor_source_batches_are_an_epoch_permutation_and_rank_slices():
    x = torch.arange(40.0).reshape(20, 2)
    source = TensorActivations(x, seed=3)
    epoch = torch.cat([source.batch(s, 5) for s in range(4)])
    assert sorted(epoch[:, 0].tolist()) == sorted(x[:, 0].tolist())  # each row once per epoch
    assert not torch.equal(epoch, x)  # shuffled
    halves = torch.cat([source.batch(2, 4, rank=0, world_size=2), source.batch(2, 4, rank=1, world_size=2)])
    torch.testing.assert_close(halves, source.batch(2, 4))
    torch.testing.assert_close(source.batch(7, 5), TensorActivations(x, seed=3).batch(7, 5))  # a function of the step


def test_shard_source_reads_collect_shards_memory_mapped(tmp_path):
    model = perturbed_model()
    tokens = torch.randint(0, 1000, (12, 8), generator=torch.Generator().manual_seed(0))
    collect_activations(model, tokens, ["blocks.1.hook_resid_pre"], tmp_path, rows_per_shard=5, disable=True)
    stored = load_activations(tmp_path)["blocks.1.hook_resid_pre"].reshape(-1, 64)
    source = ShardActivations(tmp_path, "blocks.1.hook_resid_pre", seed=1)
    assert source.n == 96 and source.d_in == 64
    epoch = torch.cat([source.batch(s, 16) for s in range(6)])
    # the same rows, in another order: sort both by their first coordinate
    torch.testing.assert_close(epoch[epoch[:, 0].argsort()], stored[stored[:, 0].argsort()])
    mapped, dtype = map_safetensors(sorted(tmp_path.glob("*.safetensors"))[0], "blocks.1.hook_resid_pre")
    assert dtype == torch.float32 and mapped.shape == (5, 8, 64)


def test_model_source_gives_the_hook_activations():
    model = perturbed_model()
    tokens = torch.randint(0, 1000, (6, 8), generator=torch.Generator().manual_seed(0))
    source = ModelActivations(model, tokens, "blocks.0.hook_mlp_out", rows_per_chunk=4, forward_batch=2, seed=0)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_mlp_out"])
    everything = cache["blocks.0.hook_mlp_out"].reshape(-1, 64)
    batch = source.batch(0, 10)
    for row in batch:  # every served activation is one of the model's
        assert (everything - row).abs().max(-1).values.min() < 1e-5
    torch.testing.assert_close(source.batch(3, 10), ModelActivations(model, tokens, "blocks.0.hook_mlp_out", rows_per_chunk=4, forward_batch=2).batch(3, 10))
    with pytest.raises(KeyError, match="hook_mlp_out"):
        ModelActivations(model, tokens, "blocks.0.hook_mlp_ou")


# ----------------------------------------------------------------------------- training runs


def _small_run(tmp_path, name, source, steps=30, resume=False, **kw):
    return train_sae(
        SAEConfig(d_in=16, d_sae=32, architecture=kw.pop("architecture", "standard"), **kw.pop("sae", {})),
        SAETrainConfig(out_dir=str(tmp_path / name), steps=steps, batch_size=64, lr=1e-2, lr_warmup_steps=5, lr_decay_steps=10,
                       checkpoint_interval=kw.pop("checkpoint_interval", 10), progress=False, b_dec_init_samples=256,
                       resample_interval=kw.pop("resample_interval", 10), dead_steps=5, **kw),
        source,
        resume=resume,
    )


class _Crash:
    """A source that raises at `step` (a process dying mid-run)."""

    def __init__(self, source, step):
        self.source, self.step = source, step
        self.d_in, self.sample, self.describe = source.d_in, source.sample, source.describe

    def batch(self, step, *args):
        if step == self.step:
            raise RuntimeError("crash")
        return self.source.batch(step, *args)


@pytest.mark.parametrize("architecture, sae", [("standard", {}), ("topk", dict(k=4)), ("jumprelu", {})])
def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, architecture, sae):
    x = torch.randn(2000, 16)
    full = _small_run(tmp_path, "full", TensorActivations(x), architecture=architecture, sae=sae)
    with pytest.raises(RuntimeError, match="crash"):
        _small_run(tmp_path, "crashed", _Crash(TensorActivations(x), 23), architecture=architecture, sae=sae)
    assert load_checkpoint(tmp_path / "crashed" / "sae_ckpt.pt")["step"] == 20
    with pytest.raises(SAETrainingError, match="already exists"):
        _small_run(tmp_path, "crashed", TensorActivations(x), architecture=architecture, sae=sae)
    resumed = _small_run(tmp_path, "crashed", TensorActivations(x), architecture=architecture, sae=sae, resume=True)
    for name, param in full["sae"].state_dict().items():
        torch.testing.assert_close(resumed["sae"].state_dict()[name], param, atol=0, rtol=0, msg=name)
    assert [r["step"] for r in read_log(tmp_path / "crashed")] == list(range(1, 31))
    assert [r["mse"] for r in read_log(tmp_path / "crashed")] == [r["mse"] for r in read_log(tmp_path / "full")]


def test_checkpoint_is_weights_only_and_outputs_are_written(tmp_path):
    result = _small_run(tmp_path, "run", TensorActivations(torch.randn(500, 16)), steps=16)
    state = torch.load(tmp_path / "run" / "sae_ckpt.pt", weights_only=True)
    assert state["step"] == 16 and json.loads(state["sae_config"])["d_sae"] == 32
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))
    assert {"loss", "mse", "l0", "explained_variance", "dead_fraction", "lr"} <= set(records[0])
    assert (tmp_path / "run" / "loss.html").stat().st_size > 1000
    loaded = SAE.from_pretrained(result["sae_dir"])
    torch.testing.assert_close(loaded.W_dec, result["sae"].W_dec)


def test_resume_with_other_settings_is_refused(tmp_path):
    x = torch.randn(500, 16)
    _small_run(tmp_path, "run", TensorActivations(x), steps=16)
    with pytest.raises(SAETrainingError, match="train_config"):
        train_sae(SAEConfig(d_in=16, d_sae=32), SAETrainConfig(out_dir=str(tmp_path / "run"), steps=20, lr=0.5, batch_size=64), TensorActivations(x), resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "sae_ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SAETrainingError, match="corrupt"):
        load_checkpoint(tmp_path / "sae_ckpt.pt")


def test_topk_dead_features_get_an_auxiliary_gradient():
    from analyses.sae.training import sae_loss

    sae = _sae("topk")
    x = torch.randn(32, 8)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:8] = True
    loss, parts, _ = sae_loss(sae, x, SAETrainConfig(aux_k=4), step=0, dead=dead)
    assert float(parts["aux"]) > 0
    loss.backward()
    assert sae.W_dec.grad[:8].abs().sum() > 0


def test_train_rejects_a_source_of_the_wrong_width(tmp_path):
    with pytest.raises(SAETrainingError, match="d_in=16"):
        train_sae(SAEConfig(d_in=8, d_sae=16), SAETrainConfig(out_dir=str(tmp_path)), TensorActivations(torch.randn(10, 16)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_shard_source_reads_half_precision_shards(tmp_path, dtype):
    model = perturbed_model()
    tokens = torch.randint(0, 1000, (4, 8), generator=torch.Generator().manual_seed(0))
    collect_activations(model, tokens, ["blocks.0.hook_resid_post"], tmp_path, dtype=dtype, disable=True)
    stored = load_activations(tmp_path)["blocks.0.hook_resid_post"].reshape(-1, 64)
    assert stored.dtype == dtype
    source = ShardActivations(tmp_path, "blocks.0.hook_resid_post")
    got = source.sample(32)
    assert got.dtype == torch.float32
    expected = stored.float()
    for row in got:  # each served row is one stored row, converted exactly
        assert (expected - row).abs().max(-1).values.min() == 0
