"""Feature sets defined at run time (HTTP API `POST feature-sets/create`), read from feature_sets.json.

Each entry of feature_sets.json becomes a module-level FeatureService of the same name, so
`feast apply` from the repository keeps them; a missing or empty file defines none, and a name
the code of feature_repo/ defines too fails the apply. Edit the JSON (or use the API), not this
file: healthmate_features.features.feature_sets documents the format.
"""

from pathlib import Path

from feature_repo import feature_views, temporal
from healthmate_features.features.feature_sets import repo_modules, services_from_file

globals().update(
    services_from_file(
        Path(__file__).with_name("feature_sets.json"), modules=[feature_views, temporal], code=repo_modules(__file__)
    )
)
