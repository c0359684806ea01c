"""How to reach S3: an endpoint, and explicit keys or boto3's standard chain.

Keys given explicitly come from a Prefect block (tasks/credentials.py); their secrets are
held as `SecretStr`, which never prints. Both types are frozen and hashable: the process's
clients are cached per `S3Access` (rbexport.storage.clients).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from ..errors import ConfigurationError


@dataclass(frozen=True)
class S3Credentials:
    """Keys given explicitly (from a Prefect block), instead of boto3's standard chain."""

    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None

    @classmethod
    def from_mapping(cls, value: object, origin: str) -> S3Credentials:
        keys = value if isinstance(value, dict) else {}
        access, secret, token = (
            keys.get(name) for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        )
        if not (isinstance(access, str) and access and isinstance(secret, str) and secret):
            raise ConfigurationError(
                f"{origin} must hold a JSON object with aws_access_key_id and aws_secret_access_key"
            )
        return cls(access, SecretStr(secret), SecretStr(token) if isinstance(token, str) and token else None)


@dataclass(frozen=True)
class S3Access:
    """How to reach S3: the endpoint, and explicit credentials or None for boto3's chain.

    The rest is None for boto3's defaults: `region_name` (signatures name it: a store with a
    region of its own refuses others), `profile_name` (keys from that profile of the AWS
    config files), `verify` (False: do not check the TLS certificate; a path: the CA bundle
    to check it with)."""

    endpoint_url: str | None = None
    credentials: S3Credentials | None = None
    region_name: str | None = None
    profile_name: str | None = None
    verify: bool | str | None = None

    @classmethod
    def of(cls, access: S3Access | str | None) -> S3Access:
        return access if isinstance(access, S3Access) else cls(access or None)
