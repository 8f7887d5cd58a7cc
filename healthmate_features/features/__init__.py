"""Features: the catalog with its SQL, units and descriptions (`catalog`), building the feature
tables on the profile's backend (`build`), the helpers feature_repo/ builds its Feast objects
with (`definitions`), and feature sets created over the API (`feature_sets`)."""
