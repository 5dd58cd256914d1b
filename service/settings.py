"""Worker settings: one ``Settings`` object per process, read from the environment once in the entry point.

Every field can be set with an environment variable named ``DANGERCLIP_<FIELD NAME IN CAPITALS>``
(``DANGERCLIP_BOOTSTRAP_SERVERS``, ``DANGERCLIP_MAX_BATCH_SIZE``, ...) or from a ``.env`` file. Lists accept a
JSON array or a comma-separated string; ``thresholds`` accepts a JSON object or ``cat=0.7,other=0.4``.
Nothing else in ``service/`` reads the environment: the entry point builds this object and passes it down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "DANGERCLIP_"


def _split_list(v: Any) -> Any:
    """``'a, b'`` or ``'["a","b"]'`` → ``['a', 'b']``; lists pass through."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            return json.loads(s)
        return [p.strip() for p in s.split(",") if p.strip()]
    return v


def file_token_provider(path: Path) -> Any:
    """A kafka-python OAUTHBEARER token provider that reads the token from ``path`` on every call."""
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class FileTokenProvider(AbstractTokenProvider):
        def token(self) -> str:
            token = Path(path).read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"OAUTHBEARER token file {path} is empty")
            return token

    return FileTokenProvider()


class Settings(BaseSettings):
    """Everything a scoring worker needs to know. Environment variables: ``DANGERCLIP_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )

    # ---------------------------------------------------------------- Kafka: where
    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list of Kafka brokers to bootstrap from."""

    input_topic: str = "dangerclip.images"
    """Topic the worker consumes images from (raw bytes or JSON envelopes, chosen per record by header)."""

    output_topic: str = "dangerclip.scores"
    """Topic results are written to: same key as the input, one result per scored input record."""

    dead_letter_topic: str = "dangerclip.dead-letter"
    """Topic for input records that cannot be scored: original bytes and headers, plus a reason code."""

    group_id: str = "dangerclip-workers"
    """Consumer group id. Every worker with the same id shares the input topic's partitions."""

    group_instance_id: str | None = None
    """Static group membership (``group.instance.id``, Kafka >= 2.3): a stable, unique name per worker (a
    StatefulSet pod name) lets a restart within ``session_timeout_ms`` keep its partitions without a
    rebalance of the whole group. Unset: dynamic membership."""

    client_id: str = "dangerclip-worker"
    """Kafka client id prefix (the host name and process id are appended), shown in broker logs and quotas."""

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset starts reading a partition."""

    # ---------------------------------------------------------------- batching
    max_batch_size: int = Field(16, ge=1, le=4096)
    """Largest micro-batch sent to the model. A batch is closed when it is this full or when
    ``max_batch_wait_ms`` has passed since its first record."""

    max_batch_wait_ms: int = Field(50, ge=0, le=60_000)
    """Longest time (ms) a partly filled batch waits for more records before it is scored."""

    output_partitioning: Literal["same", "key"] = "same"
    """Which output partition a result goes to: ``same`` (the input's partition number, modulo the output
    topic's partition count, so results keep the input's partition order) or ``key`` (Kafka's key hash)."""

    decode_workers: int = Field(2, ge=1, le=64)
    """Threads that decode and preprocess images while the model scores the previous batch."""

    # ---------------------------------------------------------------- model
    model_path: Path | None = None
    """Path of the exported DangerCLIP ``.onnx`` file (the model card inside it says everything else)."""

    providers: str = "auto"
    """onnxruntime execution providers: ``auto`` (TensorRT → CUDA → CPU), ``cpu``, ``cuda``, ``tensorrt``,
    or a comma-separated list of onnxruntime provider names."""

    intra_op_threads: int | None = Field(None, ge=1)
    """onnxruntime intra-op threads; unset lets onnxruntime use every core it sees."""

    trt_cache_dir: Path | None = None
    """TensorRT only: a writable folder for built engines and timing caches (an emptyDir or a volume), so a
    restarted worker does not spend minutes rebuilding them. Unset: no cache."""

    trt_fp16: bool = True
    """TensorRT only: allow fp16 layers (the model's fp16 export tolerance applies)."""

    # ---------------------------------------------------------------- identification (flagged images only)
    type_head_path: Path | None = None
    """An exported firearm-type head (``dangerclip types train``): flagged images' results then carry
    ``identification.type`` (type, probability, confidence level, look-alike flag). Unset: no type stage."""

    type_head_top_k: int = Field(3, ge=1, le=50)
    """How many types each identification lists (best first)."""

    index_path: Path | None = None
    """A known-content index folder (``dangerclip index build``): flagged images' results then carry
    ``identification.matches`` (PDQ) and ``known_match``. A rebuilt index is picked up without a restart."""

    embedder_path: Path | None = None
    """The retrieval embedder an index was built with (``dangerclip retrieval train``'s ``embedder.onnx``;
    ``dangerclip index build --embedder``): matches then include the nearest catalogued firearms by embedding,
    each with ``same_model`` from the embedder's calibrated distance. Needs ``index_path``."""

    index_qdrant: str | None = None
    """Where this worker reaches the Qdrant holding the index's vectors (``http://qdrant:6333``), when not where
    ``dangerclip index build --qdrant`` reached it. Unused for an index with local vectors."""

    index_top_k: int = Field(3, ge=1, le=100)
    """Matches each identification lists (nearest first)."""

    index_reload_s: float = Field(10.0, gt=0)
    """How often the worker checks for a rebuilt index."""

    thresholds: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    """Per-category threshold overrides on top of the model card's, e.g. ``weapon=0.7,knife=0.6`` or
    ``{"weapon": 0.7}``. Categories not named keep the card's threshold."""

    danger_map: Literal["none", "summary", "grid"] = "grid"
    """How much of the patch-level danger map a result carries: ``none``; ``summary`` (per category peak,
    peak position, area above 0.5); ``grid`` (the summary plus the whole ``[k, h, w]`` map quantised to
    uint8, base64)."""

    # ---------------------------------------------------------------- input limits
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    """Largest accepted input: record value, decoded ``image_b64`` payload and fetched ``uri`` body (bytes).
    Larger records go to the dead-letter topic as ``too_large``."""

    max_pixels: int = Field(40_000_000, ge=1)
    """Largest accepted image width × height, checked from the header before decoding (decompression
    bombs go to the dead-letter topic as ``too_many_pixels``)."""

    dead_letter_max_value_bytes: int = Field(512 * 1024, ge=0)
    """Dead letters carry the original value (base64, 4/3 larger) up to this size; a larger one is replaced
    by its size and sha256. Whatever this says, a dead letter is slimmed further until it fits
    ``max_message_bytes``: a dead letter is never refused for its size."""

    image_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]
    )
    """Image formats (Pillow names) the decoder accepts; anything else is ``not_an_image``. Every format is
    a parser exposed to untrusted bytes: list only what your producers send."""

    decode_budget_pixels: int = Field(80_000_000, ge=1)
    """Pixels being decoded at once across all decode threads. A decode waits until its image fits, so the
    decoders' memory stays bounded whatever arrives (an image above the budget is decoded alone)."""

    max_metadata_bytes: int = Field(16 * 1024, ge=0)
    """Largest envelope ``metadata`` (as JSON) copied to the result; a larger one makes the envelope a
    ``bad_envelope`` dead letter, so no input can make its result too large to produce."""

    max_passthrough_header_bytes: int = Field(16 * 1024, ge=0)
    """Input headers are copied onto the result and dead-letter records up to this many bytes in all (keys
    plus values); past it none are copied (the dead letter's body still holds them all, within its size
    limit). ``dangerclip-*`` headers of an input are never copied: only the worker writes those."""

    max_message_bytes: int = Field(1_000_000, ge=16 * 1024, le=100 * 1024 * 1024)
    """Largest record the worker produces (the producer's ``max_request_size``); keep it at or below the
    output and dead-letter topics' ``max.message.bytes`` (Kafka's default is 1 048 588). A result larger than
    this becomes a ``result_too_large`` dead letter; dead letters are slimmed to fit."""

    # ---------------------------------------------------------------- image by reference
    uri_fetch_enabled: bool = False
    """Allow JSON envelopes to reference an image by ``uri`` instead of carrying it. Off by default."""

    uri_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names (exact, or ``*.example.com`` for sub-domains) that ``uri`` may point to. Only ``http`` and
    ``https`` are ever fetched; an empty list allows nothing."""

    uri_max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    """Largest body fetched for a ``uri`` (bytes); the download stops there (``too_large``)."""

    uri_timeout_s: float = Field(5.0, gt=0, le=120)
    """Total deadline of a ``uri`` fetch in seconds: DNS, connect, redirects, headers and body together. A
    slower upstream gives a ``uri_fetch_failed`` dead letter, never a held partition."""

    # ---------------------------------------------------------------- Kafka: behaviour
    session_timeout_ms: int = Field(10_000, ge=1000)
    """Consumer group session timeout (ms): how soon a dead worker's partitions move to the others."""

    heartbeat_interval_ms: int = Field(3_000, ge=100)
    """Consumer heartbeat interval (ms); keep it below a third of ``session_timeout_ms``."""

    max_poll_interval_ms: int = Field(300_000, ge=1000)
    """Longest time (ms) between polls before the group considers the worker stuck; must exceed the time
    to score one batch on the slowest hardware."""

    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000)
    """Longest time (ms) the broker holds a fetch when no data is waiting. Some brokers hold it the full time
    even when data arrives meanwhile, so this bounds added latency on a quiet topic (measured with tansu:
    p50 end-to-end 280 ms at kafka-python's default 500 ms, 80 ms at 50 ms)."""

    enable_idempotence: bool = True
    """Idempotent producer (no duplicates from producer retries). Keep on for real Kafka; brokers that do
    not implement ``InitProducerId`` need it off."""

    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Compression of produced results and dead letters (``None`` = uncompressed)."""

    produce_timeout_s: float = Field(30.0, gt=0)
    """How long a batch's flush of results may take before the batch is retried (offsets not committed)."""

    retry_backoff_ms: int = Field(500, ge=1)
    """First back-off (ms) after a broker error; it doubles on each consecutive failure."""

    retry_backoff_max_ms: int = Field(30_000, ge=1)
    """Longest back-off (ms) between retries while the broker is unreachable."""

    shutdown_timeout_s: float = Field(30.0, gt=0)
    """On SIGTERM/SIGINT, the process exits within this many seconds whatever is stuck: it finishes, flushes
    and commits the batch in flight if it can, and leaves anything else uncommitted for the next owner. Keep
    it below the pod's ``terminationGracePeriodSeconds``."""

    max_buffered_bytes: int = Field(128 * 1024 * 1024, ge=1)
    """Input bytes held by the worker at once (records waiting for a batch plus the batch being scored).
    Above it the worker pauses its partitions until a batch is done: memory stays bounded, the consumer keeps
    heartbeating."""

    circuit_breaker_threshold: int = Field(3, ge=1)
    """Consecutive batches the model fails on (a health probe with a blank image failing too) before the
    worker stops consuming: readiness goes false and ``dangerclip_circuit_open`` is 1. Such batches are kept
    and retried, never dead-lettered: a broken model or GPU must not empty the stream into the dead letters."""

    circuit_breaker_reset_s: float = Field(30.0, gt=0)
    """First wait before a broken model is tried again; it doubles up to ten times this."""

    circuit_open_restart_s: float = Field(900.0, gt=0)
    """After the circuit has been open this long, ``/healthz`` fails so the orchestrator restarts the worker
    (a fresh process and GPU context); its uncommitted batch goes to another worker."""

    fault_injection: str | None = None
    """Chaos testing only; never set in production. ``exit_after_flush:N`` makes the process exit at once
    (``os._exit(137)``, as a kill -9 would) right after its N-th flushed batch, before committing it."""

    consumer_options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments passed verbatim to ``kafka.KafkaConsumer`` (JSON object)."""

    producer_options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments passed verbatim to ``kafka.KafkaProducer`` (JSON object)."""

    # ---------------------------------------------------------------- Kafka: security (passed through)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Protocol used to talk to brokers."""

    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER", "AWS_MSK_IAM"] | None
    ) = None
    """SASL mechanism, for ``SASL_PLAINTEXT`` / ``SASL_SSL``. ``OAUTHBEARER`` needs ``sasl_oauth_token_file``;
    ``AWS_MSK_IAM`` needs ``SASL_SSL`` and botocore, and takes its credentials from the AWS environment."""

    sasl_plain_username: str | None = None
    """SASL user name (PLAIN and SCRAM)."""

    sasl_plain_password: SecretStr | None = None
    """SASL password (PLAIN and SCRAM). Never logged."""

    sasl_kerberos_service_name: str = "kafka"
    """Kerberos service name, for GSSAPI."""

    sasl_oauth_token_file: Path | None = None
    """OAUTHBEARER: a file holding the bearer token, read again on every (re)authentication, so a token that a
    sidecar or a projected service-account volume rotates is picked up."""

    ssl_cafile: Path | None = None
    """CA bundle (PEM) to verify the brokers' certificates."""

    ssl_certfile: Path | None = None
    """Client certificate (PEM), for mutual TLS."""

    ssl_keyfile: Path | None = None
    """Client private key (PEM), for mutual TLS."""

    ssl_password: SecretStr | None = None
    """Password of the client private key, if it is encrypted. Never logged."""

    ssl_check_hostname: bool = True
    """Check that the broker certificate matches its host name."""

    # ---------------------------------------------------------------- HTTP: metrics and health
    metrics_enabled: bool = True
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP."""

    metrics_host: str = "127.0.0.1"
    """Address the HTTP server binds. Set ``0.0.0.0`` in a container so Prometheus and probes can reach it."""

    metrics_port: int = Field(9108, ge=0, le=65535)
    """Port of the HTTP server (0 picks a free port and logs it)."""

    # ---------------------------------------------------------------- logging
    log_json: bool = False
    """Log one JSON object per line (for log shippers) instead of plain text."""

    # ---------------------------------------------------------------- validation
    @field_validator("thresholds", mode="before")
    @classmethod
    def _parse_thresholds(cls, v: Any) -> Any:
        if isinstance(v, str):
            s = v.strip()
            if not s:
                return {}
            if s.startswith("{"):
                return json.loads(s)
            out: dict[str, float] = {}
            for part in s.split(","):
                if not part.strip():
                    continue
                name, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"threshold {part!r} is not of the form category=value")
                out[name.strip()] = float(value)
            return out
        return v

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0.0 <= t <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1], got {bad}")
        return v

    @field_validator("uri_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, v: Any) -> Any:
        v = _split_list(v)
        return [str(h).strip().lower() for h in v] if isinstance(v, list) else v

    @field_validator("image_formats", mode="before")
    @classmethod
    def _parse_formats(cls, v: Any) -> Any:
        v = _split_list(v)
        return [str(f).strip().upper() for f in v] if isinstance(v, list) else v

    @field_validator("fault_injection")
    @classmethod
    def _check_fault(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        name, _, n = v.partition(":")
        if name != "exit_after_flush" or not n.isdigit() or int(n) < 1:
            raise ValueError(f"fault_injection {v!r}: expected exit_after_flush:N with N >= 1")
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third of "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ValueError("retry_backoff_max_ms must be >= retry_backoff_ms")
        if self.sasl_mechanism == "OAUTHBEARER" and self.sasl_oauth_token_file is None:
            raise ValueError("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_file (a file holding the token)")
        if self.sasl_mechanism == "AWS_MSK_IAM" and self.security_protocol != "SASL_SSL":
            raise ValueError("sasl_mechanism AWS_MSK_IAM needs security_protocol SASL_SSL")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL_"):
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_SSL or SASL_PLAINTEXT")
        if self.embedder_path is not None and self.index_path is None:
            raise ValueError("embedder_path needs index_path: an embedder searches an index built with it")
        if len({self.input_topic, self.output_topic, self.dead_letter_topic}) != 3:
            raise ValueError("input_topic, output_topic and dead_letter_topic must be three different topics")
        return self

    # ---------------------------------------------------------------- derived
    @property
    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` as a list."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def provider_list(self) -> str | list[str]:
        """``providers`` as ``DangerScorer`` takes it."""
        parts = [p.strip() for p in self.providers.split(",") if p.strip()]
        return parts[0] if len(parts) == 1 else parts

    def kafka_security(self) -> dict[str, Any]:
        """The security keyword arguments shared by kafka-python's consumer, producer and admin client."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_plain_username is not None:
            out["sasl_plain_username"] = self.sasl_plain_username
        if self.sasl_plain_password is not None:
            out["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.sasl_mechanism == "GSSAPI":
            out["sasl_kerberos_service_name"] = self.sasl_kerberos_service_name
        if self.sasl_mechanism == "OAUTHBEARER" and self.sasl_oauth_token_file is not None:
            out["sasl_oauth_token_provider"] = file_token_provider(self.sasl_oauth_token_file)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            out["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    out[name] = str(value)
            if self.ssl_password is not None:
                out["ssl_password"] = self.ssl_password.get_secret_value()
        return out

    def env_help(self) -> list[tuple[str, str]]:
        """``(ENV_VAR, description)`` for every field, for ``--help`` and documentation."""
        return [
            (ENV_PREFIX + name.upper(), (f.description or "").split("\n")[0])
            for name, f in type(self).model_fields.items()
        ]
