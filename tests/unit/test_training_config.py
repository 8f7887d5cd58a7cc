"""Training-set configs: every bad config fails with a clear message (no repository needed)."""

from __future__ import annotations

import pytest

from healthmate_features.errors import ConfigError
from healthmate_features.training.builder import TrainingSetConfig


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "blue"}, "unknown training-set config key(s) colour"),
        ({"label": None}, "training-set config is missing label"),
        ({"task": "ranking"}, "task 'ranking' is not one of classification, regression"),
        ({"split": {"strategy": "alphabetical"}}, "alphabetical"),
        ({"preprocessing": {"numeric": {"scale": "loud"}}}, "loud"),
        ({"bump": "huge"}, "bump 'huge' is not one of major, minor, patch"),
        ({"name": 123, "label": ["y"]}, "training-set config name, label must be text"),
        ({"split": "time"}, "split must be a mapping"),
        ({"label": "event_timestamp"}, "label 'event_timestamp' is a key column of the entity frame; set label to"),
        ({"label": "user_id"}, "label 'user_id' is a key column of the entity frame; set label to"),
        ({"label": "_hm_store_row"}, "label '_hm_store_row' starts with '_hm_' or '__hm_', which is reserved"),
        ({"name": "../x"}, "training-set config name: invalid dataset name '../x'"),
        ({"split": {"embargo_days": 1e308}}, "split.embargo_days is 1e+308; it must be a number in [0, 36500]"),
        (
            {"split": {"label_horizon_days": 1e6}},
            "split.label_horizon_days is 1000000.0; it must be a number in [0, 36500]",
        ),
        ({"split": {"strategy": "random", "seed": -1}}, "split.seed is -1; it must be an integer in [0, 4294967295]"),
        (
            {"preprocessing": {"numeric": {"impute": "constant", "fill_value": 1e400}}},
            "preprocessing.numeric.fill_value is inf; it must be a number (finite)",
        ),
    ],
)
def test_bad_configs_give_clear_errors(changes, message, training_config):
    with pytest.raises(ConfigError) as info:
        TrainingSetConfig.from_dict(training_config("health_risk", **changes))
    assert message in str(info.value)
