"""Raw data: the table schemas (`schemas`), validation with rejects and loading into the profile's
raw tables (`ingest`), and the synthetic population generator (`generate`)."""
