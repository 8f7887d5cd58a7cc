"""Our Feast stores and the Feast calls around them: the DuckDB ASOF offline store (`duckdb_asof`),
the Postgres LATERAL offline store (`postgres_lateral`), the fast Redis online reader (`online`),
and open/apply/materialize/online/historical helpers (`feature_store`)."""
