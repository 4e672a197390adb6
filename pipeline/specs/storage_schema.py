"""``storage``: where a job's outputs, checkpoints and models go, and how to reach it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

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
    max_concurrency: int = Field(32, ge=1, le=1024, description="Requests in flight at once when writing many objects "
                                                                "(a sliding window over a shard's files), and the most "
                                                                "parts of one multipart upload in flight (those "
                                                                "at most 256 MiB together).")
    max_retries: int = Field(4, ge=0, le=50, description="s3://: retries of one request after throttling (SlowDown, "
                                                         "HTTP 503), a timeout (RequestTimeout) or a connection "
                                                         "error, with exponential backoff and full jitter "
                                                         "(botocore's retry modes); then the write fails with one "
                                                         "line naming the object. 0: no retries.")
    retry_mode: Literal["standard", "adaptive"] = Field("standard", description="s3://: botocore's retry mode. "
                                                        "'adaptive' also slows this client's own request rate "
                                                        "after throttling (a client-side token bucket).")
    multipart_threshold: int = Field(64 * 2**20, ge=10 * 2**20, le=5 * 2**30,
                                     description="s3://: objects of this many bytes or more go up as a multipart "
                                                 "upload (s3fs's), in parts of multipart_part_size uploaded "
                                                 "concurrently; smaller ones in one PUT. At least 10 MiB (two parts "
                                                 "of S3's 5 MiB minimum), at most 5 GiB (S3's largest PUT).")
    multipart_part_size: int = Field(16 * 2**20, ge=5 * 2**20, le=5 * 2**30,
                                     description="s3://: bytes per part of a multipart upload (S3: 5 MiB to 5 GiB); "
                                                 "at most half of multipart_threshold. Raised for an object that "
                                                 "would otherwise need more than S3's 10,000 parts.")

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

    @model_validator(mode="after")
    def _parts(self) -> "StorageSpec":
        if self.multipart_part_size * 2 > self.multipart_threshold:
            raise ValueError(f"multipart_part_size: {self.multipart_part_size:,} bytes is more than half of "
                             f"multipart_threshold ({self.multipart_threshold:,}); an object at the threshold "
                             "must make at least two parts")
        return self

    @field_validator("secret_key")
    @classmethod
    def _no_plain_secret(cls, v: SecretStr | None) -> None:
        if v is not None:
            raise ValueError("plain-text secrets are refused; name an env var in storage.credentials.secret_key_env")
        return None
