"""The settings of the deployments, in one place, from the environment (RBEXPORT_*).

prefect.yaml refers to them as `{{ $RBEXPORT_SOURCE }}` and so on: `prefect deploy` fills
them in from the environment, and `python -m rbexport.deployments.serve` from here (defaults
included). Credentials are not settings: they come from boto3's standard chain.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DeploymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RBEXPORT_", extra="ignore")

    source: str = Field("s3://rbexport-source/brain-study", description="The project the deployments export.")
    destination: str = Field("s3://rbexport-export/live", description="Where their exports go.")
    endpoint_url: str = Field("", description="The S3 endpoint; empty: AWS_ENDPOINT_URL, else AWS.")
    ground_truth_destination: str = Field(
        "s3://rbexport-export/ground-truth", description="Where the ground-truth nightly export goes."
    )
    releases: str = Field(
        "s3://rbexport-releases/ground-truth",
        description="Where releases of the ground-truth export go (one folder per release), outside it.",
    )


class ReceiverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RBEXPORT_", extra="ignore")

    webhook_secret: SecretStr = Field(description="Shared secret the store sends as `Authorization: Bearer <secret>`.")
    receiver_host: str = "127.0.0.1"
    receiver_port: int = 8787
    receiver_max_body: int = Field(1024 * 1024, description="Bodies larger than this are refused (413).")


def template_values() -> dict[str, str]:
    """The RBEXPORT_* values prefect.yaml refers to, defaults included."""
    settings = DeploymentSettings()
    return {
        "RBEXPORT_SOURCE": settings.source,
        "RBEXPORT_DESTINATION": settings.destination,
        "RBEXPORT_ENDPOINT_URL": settings.endpoint_url,
        "RBEXPORT_GROUND_TRUTH_DESTINATION": settings.ground_truth_destination,
        "RBEXPORT_RELEASES": settings.releases,
    }
