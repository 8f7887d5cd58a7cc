"""Training sets: entity-frame validation (`entities`), leakage-safe splits (`splits`), fitted
scikit-learn preprocessing (`preprocessing`), and the builder that joins, splits, fits and
versions (`builder`)."""
