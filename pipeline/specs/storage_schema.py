"""``storage``: where a job's outputs, checkpoints and models go, and how to reach it."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from pipeline.checks import Strict, check_env_name, check_uri, has_userinfo


# --------------------------------------------------------------------------------------------- storage
class Credentials(Strict):
    """Where S3/GCS credentials come from. Only environment-variable *names* live in a spec."""

    access_key_env: str | None = Field(None, description="Name of the env var holding the access key id (e.g. "
                                                         "AWS_ACCESS_KEY_ID).")
    secret_key_env: str | None = Field(None, description="Name of the env var holding the secret access key.")
    session_token_env: str | None = Field(None, description="Name of the env var holding a session token, if any.")
    profile: str | None = Field(None, description="Named profile in ~/.aws/credentials to use instead of env vars.")
    token_file_env: str | None = Field(None, description="gs://: name of the env var holding a service-account JSON "
                                                         "path.")

    @field_validator("access_key_env", "secret_key_env", "session_token_env", "token_file_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        return v if v is None else check_env_name(v)


class StorageSpec(Strict):
    """Root of everything a job writes, and how to reach it."""

    root: str = Field("outputs", description="Root URI: a local path, file://, s3://bucket/prefix, gs://bucket/prefix "
                                             "or memory://path.")
    endpoint: str | None = Field(None, description="S3 endpoint URL for S3-compatible stores (MinIO, moto, R2). "
                                                   "Default: AWS, or $AWS_ENDPOINT_URL.")
    region: str | None = Field(None, description="S3 region name.")
    credentials: Credentials = Field(default_factory=Credentials, description="Credential sources, as env-var names.")
    secret_key: SecretStr | None = Field(None, description="Refused: secrets never go in a spec; use "
                                                           "credentials.secret_key_env.")
    max_concurrency: int = Field(32, ge=1, le=1024, description="Parallel uploads when writing many small objects.")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_uri(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        if v is not None and has_userinfo(v):  # https://user:pass@host: never echo it
            raise ValueError("must not carry credentials (user:password@); name env vars in storage.credentials")
        return v

    @field_validator("secret_key")
    @classmethod
    def _no_plain_secret(cls, v: SecretStr | None) -> None:
        if v is not None:
            raise ValueError("plain-text secrets are refused; name an env var in storage.credentials.secret_key_env")
        return None
