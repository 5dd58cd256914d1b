"""Settings from DANGERCLIP_* environment variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import ENV_PREFIX, Settings


def test_every_field_has_a_docstring_and_an_env_name() -> None:
    for name, f in Settings.model_fields.items():
        assert f.description, f"{name} has no docstring"
    names = [n for n, _ in Settings.model_construct().env_help()]
    assert all(n.startswith(ENV_PREFIX) for n in names)
    assert "DANGERCLIP_BOOTSTRAP_SERVERS" in names and "DANGERCLIP_METRICS_PORT" in names


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANGERCLIP_BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("DANGERCLIP_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("DANGERCLIP_THRESHOLDS", "weapon=0.7, knife=0.55")
    monkeypatch.setenv("DANGERCLIP_URI_ALLOWED_HOSTS", "images.example.com,*.cdn.example.com")
    monkeypatch.setenv("DANGERCLIP_SASL_PLAIN_PASSWORD", "s3cret")
    monkeypatch.setenv("DANGERCLIP_PRODUCER_OPTIONS", '{"batch_size": 65536}')
    s = Settings(_env_file=None)
    assert s.bootstrap_list == ["k1:9092", "k2:9092"]
    assert s.max_batch_size == 32
    assert s.thresholds == {"weapon": 0.7, "knife": 0.55}
    assert s.uri_allowed_hosts == ["images.example.com", "*.cdn.example.com"]
    assert s.producer_options == {"batch_size": 65536}
    assert "s3cret" not in repr(s)  # secrets never end up in logs


def test_json_forms_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANGERCLIP_THRESHOLDS", '{"weapon": 0.3}')
    monkeypatch.setenv("DANGERCLIP_URI_ALLOWED_HOSTS", '["a.example.com"]')
    s = Settings(_env_file=None)
    assert s.thresholds == {"weapon": 0.3} and s.uri_allowed_hosts == ["a.example.com"]


@pytest.mark.parametrize(
    "env",
    [
        {"DANGERCLIP_MAX_BATCH_SIZE": "0"},
        {"DANGERCLIP_THRESHOLDS": "weapon=1.5"},
        {"DANGERCLIP_THRESHOLDS": "weapon"},
        {"DANGERCLIP_SESSION_TIMEOUT_MS": "3000", "DANGERCLIP_HEARTBEAT_INTERVAL_MS": "2000"},
        {"DANGERCLIP_OUTPUT_TOPIC": "dangerclip.images"},
        {"DANGERCLIP_SECURITY_PROTOCOL": "TLS"},
        {"DANGERCLIP_DANGER_MAP": "full"},
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises((ValidationError, ValueError)):
        Settings(_env_file=None)


def test_security_options_pass_through() -> None:
    s = Settings(
        _env_file=None,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="u",
        sasl_plain_password="p",
        ssl_cafile="/etc/ca.pem",
    )
    assert s.kafka_security() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
        "ssl_check_hostname": True,
        "ssl_cafile": "/etc/ca.pem",
    }
    assert Settings(_env_file=None).kafka_security() == {"security_protocol": "PLAINTEXT"}


def test_sasl_mechanisms_need_what_they_use(tmp_path) -> None:
    import pytest
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="sasl_oauth_token_file"):
        Settings(_env_file=None, security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
    with pytest.raises(ValidationError, match="SASL_SSL"):
        Settings(_env_file=None, security_protocol="SASL_PLAINTEXT", sasl_mechanism="AWS_MSK_IAM")
    with pytest.raises(ValidationError, match="security_protocol"):
        Settings(_env_file=None, sasl_mechanism="PLAIN")
    token = tmp_path / "token"
    token.write_text("first\n")
    s = Settings(
        _env_file=None, security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=token
    )
    provider = s.kafka_security()["sasl_oauth_token_provider"]
    assert provider.token() == "first"
    token.write_text("rotated")  # a sidecar or a projected volume rotates it: read again on every call
    assert provider.token() == "rotated"
    assert (
        Settings(_env_file=None, security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM").kafka_security()[
            "sasl_mechanism"
        ]
        == "AWS_MSK_IAM"
    )


def test_fault_injection_accepts_only_what_the_worker_knows() -> None:
    import pytest
    from pydantic import ValidationError

    from service.settings import Settings

    assert Settings(_env_file=None, fault_injection="exit_after_flush:3").fault_injection == "exit_after_flush:3"
    for bad in ("exit_after_flush:0", "exit_after_flush", "crash:1"):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, fault_injection=bad)


def test_image_formats_parse_from_the_environment(monkeypatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("DANGERCLIP_IMAGE_FORMATS", "jpeg, png")
    assert Settings(_env_file=None).image_formats == ["JPEG", "PNG"]
