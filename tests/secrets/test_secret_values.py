"""gitorch.secrets on its own: age identities from age-keygen, values encrypted by the real
age CLI and decrypted by pyrage, keyed digests, resolution of a desired state, and the
manifest checks of secret references."""

from __future__ import annotations

from pathlib import Path

import pytest
from age_helpers import age_identity, secret_manifest

from gitorch.errors import ManifestInvalid
from gitorch.manifests.loader import load_desired_state
from gitorch.manifests.model import DesiredState, SecretRef
from gitorch.secrets import (
    AgeKeyError,
    SecretUnavailable,
    SecretValues,
    load_age_identities,
    load_digest_key,
    with_applied_digests,
)


class File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = str(hash(text))


SERVICE = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: app}
spec:
  command: [sleep, "100"]
  env:
    PLAIN: hello
    DB: {secretFile: db}
    STRIPE: {secret: payments, key: stripe}
  secrets:
    - {name: stripe.key, secret: payments, key: stripe}
"""


def load(*texts: str) -> DesiredState:
    files = [File(f"f{i}.yaml", text) for i, text in enumerate(texts)]
    return load_desired_state(files, revision="r" * 40)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, str, Path]:
    key = tmp_path / "age.key"
    recipient = age_identity(key)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "db").write_text("db-value\n")
    return key, recipient, secrets_dir


def test_values_digests_and_resolution(world: tuple[Path, str, Path], tmp_path: Path) -> None:
    key, recipient, secrets_dir = world
    desired = load(SERVICE, secret_manifest("payments", {"stripe": "sk-123"}, recipient))
    digest_key = load_digest_key(tmp_path / "state", create=False)
    assert digest_key is None
    (tmp_path / "state").mkdir()
    digest_key = load_digest_key(tmp_path / "state", create=True)
    assert (
        digest_key is not None
        and (tmp_path / "state" / "secret-digest.key").stat().st_mode & 0o777 == 0o600
    )
    assert load_digest_key(tmp_path / "state", create=True) == digest_key  # made once
    values = SecretValues(secrets_dir, load_age_identities(key), digest_key)
    stripe = SecretRef(secret="payments", key="stripe")
    assert values.value(stripe, desired.secrets, where="t") == b"sk-123"
    assert values.value(SecretRef(file="db"), {}, where="t") == b"db-value\n"

    resolved = values.resolve(desired)
    app = resolved.services["app"]
    assert app.template_digest != desired.services["app"].template_digest
    digests = {v.name: v.ref.digest for v in app.env if v.ref is not None}
    assert all(d and d.startswith("hmac-sha256:") for d in digests.values())
    assert "sk-123" not in str(app.canonical) and "db-value" not in str(app.canonical)
    assert values.resolve(desired).services["app"] is app  # cached: nothing changed

    # Re-encrypting the same value: same digest. A new value: a new template digest.
    again = load(SERVICE, secret_manifest("payments", {"stripe": "sk-123"}, recipient))
    assert values.resolve(again).services["app"].template_digest == app.template_digest
    rotated = load(SERVICE, secret_manifest("payments", {"stripe": "sk-456"}, recipient))
    assert values.resolve(rotated).services["app"].template_digest != app.template_digest
    # Another digest key (another state directory): other digests.
    other = SecretValues(secrets_dir, load_age_identities(key), b"k" * 32)
    assert other.resolve(desired).services["app"].template_digest != app.template_digest

    # A file that vanishes keeps its last digest: nothing rolls.
    (secrets_dir / "db").unlink()
    assert values.resolve(desired).services["app"].template_digest == app.template_digest
    with pytest.raises(SecretUnavailable, match="cannot read secretFile 'db'"):
        values.value(SecretRef(file="db"), {}, where="t")
    # A stored (resolved) canonical spec builds the same template again.
    from gitorch.manifests.build import build_service

    assert build_service(app.canonical, app.origin).template_digest == app.template_digest


def test_plan_without_the_values_takes_applied_digests(
    world: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """`gitorch plan` with no --secrets-dir (a CI runner) cannot digest the values: it takes
    the applied digests of unchanged references, so an untouched Service is not an update
    that replaces its replicas; a changed reference, or a rotated value when the plan can
    read it, still is."""
    key, recipient, secrets_dir = world
    desired = load(SERVICE, secret_manifest("payments", {"stripe": "sk-123"}, recipient))
    values = SecretValues(secrets_dir, load_age_identities(key), b"d" * 32)
    applied = values.resolve(desired).services["app"]
    before = {"app": applied.canonical}

    carried = with_applied_digests(desired, before).services["app"]
    assert carried.template_digest == applied.template_digest
    assert with_applied_digests(desired, {}) is desired  # nothing applied: as it is
    # Resolved references keep their own digests: a rotation the plan can see shows.
    (secrets_dir / "db").write_text("rotated\n")
    rotated = SecretValues(secrets_dir, load_age_identities(key), b"d" * 32).resolve(desired)
    assert (
        with_applied_digests(rotated, before).services["app"].template_digest
        != applied.template_digest
    )
    # Another file named: no digest carried over for it, the change shows.
    moved = load(
        SERVICE.replace("{secretFile: db}", "{secretFile: db2}"),
        secret_manifest("payments", {"stripe": "sk-123"}, recipient),
    )
    app = with_applied_digests(moved, before).services["app"]
    assert app.template_digest != applied.template_digest
    refs = {v.name: v.ref for v in app.env if v.ref is not None}
    assert refs["DB"] is not None and refs["DB"].digest is None
    assert refs["STRIPE"] is not None and refs["STRIPE"].digest is not None


def test_a_service_without_secrets_is_untouched(world: tuple[Path, str, Path]) -> None:
    key, _recipient, secrets_dir = world
    plain = SERVICE.split("  env:")[0] + "  env: {A: b}\n"
    desired = load(plain)
    values = SecretValues(secrets_dir, load_age_identities(key), b"x" * 32)
    assert values.resolve(desired) is desired


def test_wrong_key_and_unsafe_key_file(world: tuple[Path, str, Path], tmp_path: Path) -> None:
    key, recipient, secrets_dir = world
    desired = load(SERVICE, secret_manifest("payments", {"stripe": "sk-123"}, recipient))
    stranger = tmp_path / "other.key"
    age_identity(stranger)
    values = SecretValues(secrets_dir, load_age_identities(stranger), b"x" * 32)
    with pytest.raises(SecretUnavailable, match="cannot decrypt key 'stripe' of Secret") as err:
        values.value(SecretRef(secret="payments", key="stripe"), desired.secrets, where="t")
    assert "sk-123" not in err.value.message
    with pytest.raises(SecretUnavailable, match="has no --age-key"):
        SecretValues(secrets_dir).value(
            SecretRef(secret="payments", key="stripe"), desired.secrets, where="t"
        )
    key.chmod(0o644)
    with pytest.raises(AgeKeyError, match=r"accessible by others \(mode 0644\)"):
        load_age_identities(key)
    junk = tmp_path / "junk.key"
    junk.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    junk.chmod(0o600)
    with pytest.raises(AgeKeyError, match="line 1 is not an age identity") as caught:
        load_age_identities(junk)
    assert "NOTAKEY" not in caught.value.message


def test_references_are_checked_with_positions(world: tuple[Path, str, Path]) -> None:
    _key, recipient, _dir = world
    bad = SERVICE.replace("key: stripe}\n  secrets", "key: nope}\n  secrets").replace(
        "PLAIN: hello", "PLAIN: hello\n    BOTH: {secretFile: x, secret: payments, key: stripe}"
    )
    with pytest.raises(ManifestInvalid) as caught:
        load(bad, secret_manifest("payments", {"stripe": "v"}, recipient))
    messages = [str(d) for d in caught.value.diagnostics]
    assert any("spec.env.BOTH: give either secretFile, or secret with key" in m for m in messages)
    assert any("spec.env.STRIPE.key: Secret 'payments' has no key 'nope'" in m for m in messages)
