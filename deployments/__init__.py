"""Running the export flow as deployments: `prefect.yaml` describes them; `serve` runs them here."""
