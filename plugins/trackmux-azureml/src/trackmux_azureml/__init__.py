"""trackmux plugin for Azure ML (``report_to="azure_ml"``)."""
