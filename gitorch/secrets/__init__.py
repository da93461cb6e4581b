"""Secret values: read or decrypted in memory when a replica starts, never stored.

Two sources, one reference type (:class:`~gitorch.manifests.model.SecretRef`):

* ``{secretFile: NAME}``: a file under the daemon's ``--secrets-dir``;
* ``{secret: NAME, key: KEY}``: a key of a ``kind: Secret`` in the repo, its value
  encrypted (armored age) for the daemon's age key (``--age-key FILE``), decrypted in
  memory by pyrage.

What the rest of gitorch sees of a value is a keyed digest (HMAC-SHA256 with a key kept
in the state directory, ``secret-digest.key``): :meth:`SecretValues.resolve` writes it into
each reference of the desired state, so a rotated file or a re-encrypted value changes
the Service's template digest and rolls it, while the store, the replicas' labels and the
plan only ever hold the digest. The values themselves go to the runtime in the
:class:`~gitorch.runtime.base.ReplicaSpec` (``secret_env``, ``secret_files``), which keeps
them out of its records. Only this package imports ``pyrage``.
"""

from gitorch.secrets.values import (
    DIGEST_KEY_FILE,
    AgeKeyError,
    SecretUnavailable,
    SecretValues,
    load_age_identities,
    load_digest_key,
    save_digest_key,
    with_applied_digests,
)

__all__ = [
    "DIGEST_KEY_FILE",
    "AgeKeyError",
    "SecretUnavailable",
    "SecretValues",
    "load_age_identities",
    "load_digest_key",
    "save_digest_key",
    "with_applied_digests",
]
