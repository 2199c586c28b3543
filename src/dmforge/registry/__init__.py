"""Run records, model versions, incremental lineage and the deploy quality gate."""
