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
    ],
)
def test_bad_configs_give_clear_errors(changes, message, training_config):
    with pytest.raises(ConfigError) as info:
        TrainingSetConfig.from_dict(training_config("health_risk", **changes))
    assert message in str(info.value)
