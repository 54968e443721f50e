"""Model registry, official-layout parity and weights loading.

The official files cannot be downloaded here, so the tests build state dicts with the released key
names and shapes (written out below from the release's layer list, independently of our modules) and
compare our forward pass with a functional transcription of the reference forward pass, which for
SIGGRAPH17 runs the decoder tail twice exactly as the release does.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from colorize_core.models import (WeightsError, WeightsSpec, create_model, get_entry, list_models, load_model,
                                  weights_preprocessing)
from colorize_core.models import weights as weights_mod
from colorize_core.models.eccv16 import ECCV16Colorizer, ab_bin_centres
from colorize_core.models.registry import ModelEntry, register_model

# (key prefix, kind, shape args). conv: (out, in, k); convT: (in, out, k); bn: (c,)
ECCV16_LAYOUT = [
    ("model1.0", "conv", (64, 1, 3)), ("model1.2", "conv", (64, 64, 3)), ("model1.4", "bn", (64,)),
    ("model2.0", "conv", (128, 64, 3)), ("model2.2", "conv", (128, 128, 3)), ("model2.4", "bn", (128,)),
    ("model3.0", "conv", (256, 128, 3)), ("model3.2", "conv", (256, 256, 3)), ("model3.4", "conv", (256, 256, 3)),
    ("model3.6", "bn", (256,)),
    *[(f"model{b}.{i}", "conv", (512, 256 if (b, i) == (4, 0) else 512, 3)) for b in (4, 5, 6, 7) for i in (0, 2, 4)],
    *[(f"model{b}.6", "bn", (512,)) for b in (4, 5, 6, 7)],
    ("model8.0", "convT", (512, 256, 4)), ("model8.2", "conv", (256, 256, 3)), ("model8.4", "conv", (256, 256, 3)),
    ("model8.6", "conv", (313, 256, 1)), ("model_out", "conv_nobias", (2, 313, 1)),
]

SIGGRAPH17_LAYOUT = [
    ("model1.0", "conv", (64, 4, 3)), ("model1.2", "conv", (64, 64, 3)), ("model1.4", "bn", (64,)),
    ("model2.0", "conv", (128, 64, 3)), ("model2.2", "conv", (128, 128, 3)), ("model2.4", "bn", (128,)),
    ("model3.0", "conv", (256, 128, 3)), ("model3.2", "conv", (256, 256, 3)), ("model3.4", "conv", (256, 256, 3)),
    ("model3.6", "bn", (256,)),
    *[(f"model{b}.{i}", "conv", (512, 256 if (b, i) == (4, 0) else 512, 3)) for b in (4, 5, 6, 7) for i in (0, 2, 4)],
    *[(f"model{b}.6", "bn", (512,)) for b in (4, 5, 6, 7)],
    ("model8up.0", "convT", (512, 256, 4)), ("model3short8.0", "conv", (256, 256, 3)),
    ("model8.1", "conv", (256, 256, 3)), ("model8.3", "conv", (256, 256, 3)), ("model8.5", "bn", (256,)),
    ("model9up.0", "convT", (256, 128, 4)), ("model2short9.0", "conv", (128, 128, 3)),
    ("model9.1", "conv", (128, 128, 3)), ("model9.3", "bn", (128,)),
    ("model10up.0", "convT", (128, 128, 4)), ("model1short10.0", "conv", (128, 64, 3)),
    ("model10.1", "conv", (128, 128, 3)),
    ("model_class.0", "conv", (529, 256, 1)), ("model_out.0", "conv", (2, 128, 1)),
]


def official_state_dict(layout, seed=0, with_bn_counters=True):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, kind, shape in layout:
        if kind in ("conv", "conv_nobias"):
            out, cin, k = shape
            sd[f"{key}.weight"] = torch.randn(out, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
            if kind == "conv":
                sd[f"{key}.bias"] = torch.randn(out, generator=g) * 0.01
        elif kind == "convT":
            cin, out, k = shape
            sd[f"{key}.weight"] = torch.randn(cin, out, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
            sd[f"{key}.bias"] = torch.randn(out, generator=g) * 0.01
        else:
            (c,) = shape
            sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
            sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
            sd[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
            sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
            if with_bn_counters:
                sd[f"{key}.num_batches_tracked"] = torch.tensor(1000)
    return sd


def _bn(x, sd, key):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], training=False, eps=1e-5)


def _conv(x, sd, key, stride=1, dilation=1):
    w = sd[f"{key}.weight"]
    pad = dilation * (w.shape[-1] // 2)
    return F.conv2d(x, w, sd.get(f"{key}.bias"), stride=stride, padding=pad, dilation=dilation)


def _convT(x, sd, key):
    return F.conv_transpose2d(x, sd[f"{key}.weight"], sd[f"{key}.bias"], stride=2, padding=1)


def _block(x, sd, block, n_convs, stride_last=1, dilation=1):
    for i in range(n_convs):
        s = stride_last if i == n_convs - 1 else 1
        x = F.relu(_conv(x, sd, f"{block}.{2 * i}", stride=s, dilation=dilation))
    return _bn(x, sd, f"{block}.{2 * n_convs}")


def reference_eccv16(sd, l):
    x = (l - 50) / 100
    x = _block(x, sd, "model1", 2, stride_last=2)
    x = _block(x, sd, "model2", 2, stride_last=2)
    x = _block(x, sd, "model3", 3, stride_last=2)
    x = _block(x, sd, "model4", 3)
    x = _block(x, sd, "model5", 3, dilation=2)
    x = _block(x, sd, "model6", 3, dilation=2)
    x = _block(x, sd, "model7", 3)
    x = F.relu(_convT(x, sd, "model8.0"))
    x = F.relu(_conv(x, sd, "model8.2"))
    x = F.relu(_conv(x, sd, "model8.4"))
    x = _conv(x, sd, "model8.6")
    out = F.conv2d(F.softmax(x, dim=1), sd["model_out.weight"])
    return F.interpolate(out, scale_factor=4, mode="bilinear") * 110


def reference_siggraph17(sd, l, ab=None, mask=None):
    ab = torch.cat((l * 0, l * 0), 1) if ab is None else ab
    mask = l * 0 if mask is None else mask
    c1 = _block(torch.cat(((l - 50) / 100, ab / 110, mask), 1), sd, "model1", 2)
    c2 = _block(c1[:, :, ::2, ::2], sd, "model2", 2)
    c3 = _block(c2[:, :, ::2, ::2], sd, "model3", 3)
    x = _block(c3[:, :, ::2, ::2], sd, "model4", 3)
    x = _block(x, sd, "model5", 3, dilation=2)
    x = _block(x, sd, "model6", 3, dilation=2)
    c7 = _block(x, sd, "model7", 3)
    up8 = _convT(c7, sd, "model8up.0") + _conv(c3, sd, "model3short8.0")
    c8 = _bn(F.relu(_conv(F.relu(_conv(F.relu(up8), sd, "model8.1")), sd, "model8.3")), sd, "model8.5")
    out = None
    for _ in range(2):  # the release evaluates the tail twice; the result is the same
        up9 = _convT(c8, sd, "model9up.0") + _conv(c2, sd, "model2short9.0")
        c9 = _bn(F.relu(_conv(F.relu(up9), sd, "model9.1")), sd, "model9.3")
        up10 = _convT(c9, sd, "model10up.0") + _conv(c1, sd, "model1short10.0")
        c10 = F.leaky_relu(_conv(F.relu(up10), sd, "model10.1"), 0.2)
        out = torch.tanh(_conv(c10, sd, "model_out.0"))
    return out * 110


@pytest.fixture(scope="module")
def l_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 64, 48, generator=g) * 100


def test_registry_names_and_param_counts():
    assert {"eccv16", "siggraph17"} <= set(list_models())
    for name in ("eccv16", "siggraph17"):
        entry = get_entry(name)
        model = create_model(name)
        assert not model.training
        assert sum(p.numel() for p in model.parameters()) == entry.num_params
        with torch.no_grad():
            out = model(torch.rand(1, 1, *entry.input_size) * 100)
        assert out.shape == (1, 2, *entry.input_size)
    # SIGGRAPH17 without its unused class head: the figure the reference data gives.
    sig = create_model("siggraph17")
    assert sum(p.numel() for n, p in sig.named_parameters() if not n.startswith("model_class")) == 34_051_074


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelEntry("eccv16", ECCV16Colorizer, 0, "dup"))
    with pytest.raises(KeyError, match="unknown model"):
        get_entry("no-such-model")


@pytest.mark.parametrize("name,layout", [("eccv16", ECCV16_LAYOUT), ("siggraph17", SIGGRAPH17_LAYOUT)])
def test_official_layout_keys_and_shapes(name, layout):
    model = create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: tuple(v.shape) for k, v in official_state_dict(layout).items()}
    assert ours == official


@pytest.mark.parametrize("with_counters", [True, False])
def test_eccv16_parity_with_reference(tmp_path, l_batch, with_counters):
    sd = official_state_dict(ECCV16_LAYOUT, with_bn_counters=with_counters)
    path = tmp_path / "eccv16.pth"
    torch.save(sd, path)
    model = create_model("eccv16", weights=str(path))
    with torch.no_grad():
        ours, ref = model(l_batch), reference_eccv16(sd, l_batch)
    assert ours.shape == (2, 2, 64, 48)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_siggraph17_parity_with_reference_auto_and_hints(tmp_path, l_batch):
    sd = official_state_dict(SIGGRAPH17_LAYOUT, seed=3)
    path = tmp_path / "siggraph17.pth"
    torch.save(sd, path)
    model = create_model("siggraph17", weights=str(path))
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(2, 1, 64, 48, generator=g) > 0.98).float()
    ab = (torch.rand(2, 2, 64, 48, generator=g) * 200 - 100) * mask
    with torch.no_grad():
        torch.testing.assert_close(model(l_batch), reference_siggraph17(sd, l_batch), atol=1e-4, rtol=1e-4)
        hinted = model(l_batch, ab, mask)
        torch.testing.assert_close(hinted, reference_siggraph17(sd, l_batch, ab, mask), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(hinted, model(l_batch))


def test_siggraph17_rejects_sizes_not_multiple_of_8():
    model = create_model("siggraph17")
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 1, 60, 64))
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        model(torch.zeros(1, 3, 64, 64))


def test_eccv16_random_init_holds_bin_centres_and_annealed_mean(l_batch):
    model = create_model("eccv16")
    w = model.model_out.weight[:, :, 0, 0].t().detach().numpy() * 110
    np.testing.assert_allclose(w, ab_bin_centres(), atol=1e-4)
    annealed = create_model("eccv16", temperature=0.38)
    annealed.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = model.logits(l_batch)
        expected = F.interpolate(F.conv2d(F.softmax(logits / 0.38, 1), model.model_out.weight),
                                 scale_factor=4, mode="bilinear") * 110
        torch.testing.assert_close(annealed(l_batch), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        create_model("eccv16", temperature=0)


def test_weights_errors_name_file_and_key(tmp_path):
    sd = official_state_dict(ECCV16_LAYOUT)
    missing = dict(sd)
    del missing["model3.2.weight"]
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    with pytest.raises(WeightsError, match=r"missing\.pth.*model3\.2\.weight"):
        create_model("eccv16", weights=str(p))
    bad = dict(sd)
    bad["model8.6.weight"] = torch.zeros(312, 256, 1, 1)
    p = tmp_path / "shape.pth"
    torch.save(bad, p)
    with pytest.raises(WeightsError, match=r"shape\.pth.*model8\.6\.weight.*\(312, 256, 1, 1\)"):
        create_model("eccv16", weights=str(p))
    p = tmp_path / "sig.pth"
    torch.save(official_state_dict(SIGGRAPH17_LAYOUT), p)
    with pytest.raises(WeightsError, match="sig.pth"):
        create_model("eccv16", weights=str(p))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pth"):
        create_model("eccv16", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match="not found"):
        create_model("eccv16", weights=str(tmp_path / "absent.pth"))


def test_download_cache_hash_check_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sd = official_state_dict(ECCV16_LAYOUT)
    cached = weights_mod.hub_cache_dir() / "eccv16-test.pth"
    cached.parent.mkdir(parents=True)
    torch.save(sd, cached)
    digest = weights_mod.sha256_file(cached)

    def no_network(*a, **k):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    good = WeightsSpec(uri="https://example.invalid/eccv16-test.pth", sha256=digest[:8], num_bytes=None)
    state = weights_mod.load_state_dict("official", spec=good)
    assert set(state) == set(sd)
    bad = WeightsSpec(uri=good.uri, sha256="00000000", num_bytes=None)
    with pytest.raises(WeightsError, match=r"eccv16-test\.pth.*does not match"):
        weights_mod.load_state_dict("official", spec=bad)
    assert not cached.exists(), "a corrupt download must not stay in the cache"


def test_official_download_failure_says_how_to_pass_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match="--weights"):
        load_model("eccv16", "official")


def test_load_model_refuses_random_weights():
    with pytest.raises(WeightsError, match="no weights"):
        load_model("siggraph17")
    module, info = load_model("siggraph17", allow_random=True)
    assert info.accepts_hints and info.input_size == (256, 256) and len(info.weights_sha256) == 64


def test_specs_and_entries_pickle_round_trip():
    for name in ("eccv16", "siggraph17"):
        entry = get_entry(name)
        assert pickle.loads(pickle.dumps(entry)) == entry
        spec = entry.weights["official"]
        assert pickle.loads(pickle.dumps(spec)) == spec
        # The size is the architecture's, declared once on its class; the released spec does not repeat it.
        assert spec.preprocessing is None
        assert weights_preprocessing(entry, "official").input_size == entry.input_size == entry.builder.input_size
