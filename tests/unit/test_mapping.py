import pytest

from nanoify.distill.mapping import LayerMatch, build_matches, layer_pairs
from nanoify.errors import ConfigError


def test_uniform_is_tinybert_map():
    assert layer_pairs("uniform", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert layer_pairs("uniform", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_pairs("uniform", 6, 6) == [(i, i) for i in range(1, 7)]


def test_last_and_explicit():
    assert layer_pairs("last", 2, 6) == [(1, 5), (2, 6)]
    assert layer_pairs("1:3, 2:6", 2, 6) == [(1, 3), (2, 6)]


@pytest.mark.parametrize("spec", ["3:1", "1:7", "0:2", "1-3", "bogus"])
def test_bad_maps_are_clear_errors(spec):
    with pytest.raises(ConfigError):
        layer_pairs(spec, 2, 6)


def test_build_matches_weights_and_order():
    ms = build_matches("uniform", 2, 4, attention_weight=1.0, hidden_weight=0.5, embedding_weight=2.0)
    assert ms[0] == LayerMatch(0, 0, "embedding", "mse", 2.0)
    assert [(m.student, m.teacher, m.feature) for m in ms[1:]] == [
        (1, 2, "attention"), (1, 2, "hidden"), (2, 4, "attention"), (2, 4, "hidden")]
    assert build_matches("uniform", 2, 4, 0, 0, 0) == []
    assert LayerMatch(1, 2).to_dict() == {"student": 1, "teacher": 2, "feature": "hidden", "loss": "mse",
                                          "weight": 1.0}
    with pytest.raises(ConfigError):
        LayerMatch(1, 2, feature="value")


def test_features_pick_the_matched_layers_exactly():
    from types import SimpleNamespace

    from nanoify.distill.mapping import features

    def outputs(tag, n):  # hidden_states[0] is the embedding output; attentions[k-1] belongs to layer k
        return SimpleNamespace(hidden_states=tuple(f"{tag}-hidden-{i}" for i in range(n + 1)),
                               attentions=tuple(f"{tag}-attn-layer{i + 1}" for i in range(n)))

    s, t = outputs("s", 2), outputs("t", 4)
    assert features(LayerMatch(1, 2, "hidden"), s, t) == ("s-hidden-1", "t-hidden-2")
    assert features(LayerMatch(2, 4, "hidden"), s, t) == ("s-hidden-2", "t-hidden-4")
    assert features(LayerMatch(1, 2, "attention"), s, t) == ("s-attn-layer1", "t-attn-layer2")
    assert features(LayerMatch(2, 4, "attention"), s, t) == ("s-attn-layer2", "t-attn-layer4")
    assert features(LayerMatch(0, 0, "embedding"), s, t) == ("s-hidden-0", "t-hidden-0")
