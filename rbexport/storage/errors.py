"""boto3's exceptions as rbexport's (rbexport.errors): not found, a failed condition,
denied, busy or refused; only what a person needs, never a credential."""

from __future__ import annotations

from ..errors import (
    AccessDeniedError,
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailed,
    TransientStorageError,
)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
}

# The store received bytes that do not match the checksum sent with them (corrupted on the way).
_CORRUPTED = ("BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch")


def _corrupted_message(url: str, code: str) -> str:
    return f"{url}: the store refused the upload: the bytes it received do not match their checksum ({code})"


class s3_errors:
    """Turn boto3's exceptions into ours, keeping only what a person needs (no credentials)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            return None
        from botocore import exceptions as boto

        ours = _client_error(self.url, error) if isinstance(error, boto.ClientError) else _other_error(self.url, error)
        if ours is not None:
            raise ours from None
        return None


def _client_error(url: str, error) -> Exception:
    """What the store's answer means: not found, a failed condition, denied, busy, or refused."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _NOT_FOUND:
        return ObjectNotFoundError(url)
    if status == 412 or code in {"PreconditionFailed", "ConditionalRequestConflict"}:
        return PreconditionFailed(url)
    if code in _CORRUPTED:
        return TransientStorageError(_corrupted_message(url, code))
    if code in _DENIED:
        return AccessDeniedError(f"access denied to {url} ({code}): check the credentials and their permissions")
    if status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}:
        return TransientStorageError(f"{url}: the store answered {code or status}")
    return ConfigurationError(f"{url}: the store refused the request ({code or status})")


def _other_error(url: str, error: BaseException) -> Exception | None:
    """boto3's errors that are not an answer (credentials, connections, checksums), or None."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as boto

    if isinstance(error, boto.ProfileNotFound):
        profile = error.kwargs.get("profile")
        return ConfigurationError(
            f"no AWS profile {profile!r} in this machine's AWS config files (~/.aws/config, ~/.aws/credentials)"
        )
    if isinstance(error, boto.NoCredentialsError | boto.PartialCredentialsError):
        return ConfigurationError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(error, boto.EndpointConnectionError | boto.ConnectionError | boto.HTTPClientError):
        return TransientStorageError(f"{url}: cannot connect to the store ({type(error).__name__})")
    if isinstance(error, boto.FlexibleChecksumError):  # a read whose bytes do not match the store's checksum
        return TransientStorageError(f"{url}: the bytes read do not match the checksum the store holds for them")
    if isinstance(error, boto.ResponseStreamingError | boto.IncompleteReadError):
        return TransientStorageError(f"{url}: the connection broke during the transfer")
    if isinstance(error, S3UploadFailedError):  # a multipart upload wraps the ClientError in text
        corrupted = next((code for code in _CORRUPTED if code in str(error)), None)
        if corrupted:
            return TransientStorageError(_corrupted_message(url, corrupted))
        if any(code in str(error) for code in _DENIED):
            return AccessDeniedError(f"access denied to {url}: check the credentials and their permissions")
        return TransientStorageError(f"{url}: the multipart upload failed")
    if isinstance(error, ValueError) and "endpoint" in str(error).lower():
        return ConfigurationError(f"invalid S3 endpoint URL: {error}")
    return None
