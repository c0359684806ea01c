"""S3 access for a run: the endpoint, and the keys of a Prefect block when one is named.

`credentials_block` names a block the way Prefect does, `<block-type-slug>/<name>`:

- `secret/NAME`, or a bare `NAME`: a Secret block whose value is a JSON object with
  aws_access_key_id, aws_secret_access_key and, optionally, aws_session_token;
- `aws-credentials/NAME`: prefect-aws's AwsCredentials (keys, or a profile_name; region_name;
  aws_client_parameters: endpoint_url, verify, verify_cert_path);
- `minio-credentials/NAME`: prefect-aws's MinIOCredentials (minio_root_user,
  minio_root_password, region_name, aws_client_parameters).

The endpoint: the block's `aws_client_parameters.endpoint_url` when set, else the
`endpoint_url` given to the run, else boto3's default (AWS_ENDPOINT_URL, else AWS). A run
given an endpoint_url that differs from its block's stops with a ConfigurationError naming
both: neither is picked silently.
"""

from __future__ import annotations

import json
from typing import Any, cast

from rbexport.errors import ConfigurationError
from rbexport.storage import S3Access, S3Credentials

# Prefect's block type slug -> the class's name, as messages call it.
KINDS = {"secret": "Secret", "aws-credentials": "AwsCredentials", "minio-credentials": "MinIOCredentials"}
INSTALL_AWS = "pip install 'rbexport[aws]'"


def s3_access(endpoint_url: str | None, credentials_block: str | None) -> S3Access:
    """How the run reaches S3: `endpoint_url` and boto3's chain, or what the named block holds."""
    if not credentials_block:
        return S3Access(endpoint_url or None)
    kind, name = parse_block_name(credentials_block)
    if kind == "secret":
        return S3Access(endpoint_url or None, _secret_keys(name))
    return _aws_block_access(kind, name, endpoint_url or None)


def parse_block_name(credentials_block: str) -> tuple[str, str]:
    """(block type slug, block name) of `NAME` (a Secret block) or `SLUG/NAME`."""
    kind, slash, name = credentials_block.strip().rpartition("/")
    if not slash:
        return "secret", name
    if kind not in KINDS or not name:
        raise ConfigurationError(
            f"credentials block {credentials_block!r}: name a block as secret/NAME, aws-credentials/NAME "
            "or minio-credentials/NAME (a bare NAME is a Secret block)"
        )
    return kind, name


def _secret_keys(name: str) -> S3Credentials:
    from prefect.blocks.system import Secret

    try:
        value = cast(Secret, Secret.load(name)).get()
    except ValueError:
        raise ConfigurationError(f"no Prefect Secret block named {name!r}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    return S3Credentials.from_mapping(value, f"Secret block {name!r}")


def _aws_block_access(kind: str, name: str, endpoint_url: str | None) -> S3Access:
    """The access an AwsCredentials or MinIOCredentials block describes."""
    try:
        from prefect_aws import AwsCredentials, MinIOCredentials
    except ImportError:
        raise ConfigurationError(
            f"the credentials block {kind}/{name} needs prefect-aws, which is not installed: {INSTALL_AWS}"
        ) from None
    origin = f"{KINDS[kind]} block {name!r}"
    block_class = AwsCredentials if kind == "aws-credentials" else MinIOCredentials
    try:
        block: Any = block_class.load(name)
    except ValueError:
        raise ConfigurationError(f"no Prefect {KINDS[kind]} block named {name!r}") from None
    profile_name = None
    if kind == "aws-credentials":
        names = ("aws_access_key_id", "aws_secret_access_key")
        credentials = _keys(
            origin, names, block.aws_access_key_id, block.aws_secret_access_key, block.aws_session_token
        )
        profile_name = block.profile_name or None
        if profile_name and credentials:
            raise ConfigurationError(f"{origin} has keys and a profile_name: keep one of them")
    else:
        names = ("minio_root_user", "minio_root_password")
        credentials = _keys(origin, names, block.minio_root_user, block.minio_root_password, None)
    endpoint, verify = _client_parameters(origin, block.aws_client_parameters)
    return S3Access(
        _one_endpoint(origin, endpoint, endpoint_url),
        credentials,
        block.region_name or None,
        profile_name,
        verify,
    )


def _keys(origin: str, names: tuple[str, str], access: Any, secret: Any, token: Any) -> S3Credentials | None:
    """The block's keys; None when it has none (boto3's chain or its profile finds them)."""
    from pydantic import SecretStr

    secret_value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not (access or secret_value or token):
        return None
    if not (access and secret_value):
        raise ConfigurationError(f"{origin} needs both {names[0]} and {names[1]}")
    return S3Credentials(access, SecretStr(secret_value), SecretStr(token) if token else None)


def _client_parameters(origin: str, parameters: Any) -> tuple[str | None, bool | str | None]:
    """The endpoint and TLS verification of a block's aws_client_parameters. What rbexport
    cannot honour is refused, never ignored: its botocore `config` (rbexport sets retries and
    timeouts itself), an `api_version`, and `use_ssl: false` without an http:// endpoint."""
    endpoint = parameters.endpoint_url or None
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"{origin}: invalid endpoint URL {endpoint!r} in aws_client_parameters: it must start with "
            "http:// or https://"
        )
    unsupported = [
        name
        for name, is_set in (
            ("config", bool(parameters.config)),
            ("api_version", bool(parameters.api_version)),
            ("use_ssl", parameters.use_ssl is False and not (endpoint or "").startswith("http://")),
        )
        if is_set
    ]
    if unsupported:
        raise ConfigurationError(
            f"{origin}: rbexport does not support aws_client_parameters {', '.join(unsupported)}: remove "
            + ("it" if len(unsupported) == 1 else "them")
            + " from the block (for a store without TLS, give an http:// endpoint_url)"
        )
    verify: bool | str | None = None
    if parameters.verify_cert_path:
        verify = str(parameters.verify_cert_path)
    elif parameters.verify is False:
        verify = False
    elif parameters.verify not in (None, True):
        verify = str(parameters.verify)  # a CA bundle path, the older way
    return endpoint, verify


def _one_endpoint(origin: str, block_endpoint: str | None, endpoint_url: str | None) -> str | None:
    """The block's endpoint when it has one; the run's otherwise. Both, differing: an error."""
    if block_endpoint and endpoint_url and block_endpoint.rstrip("/") != endpoint_url.rstrip("/"):
        raise ConfigurationError(
            f"two endpoints: endpoint_url {endpoint_url} and {block_endpoint} from {origin}: "
            "give the endpoint in one place (or the same in both)"
        )
    return block_endpoint or endpoint_url
