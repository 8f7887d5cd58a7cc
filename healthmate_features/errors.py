"""The package's error tree: one base class, one subclass per kind of failure.

Every message names the object, the offending value, the count where there is one, and the fix.
The CLI and the HTTP API turn these (and only these) into user-facing errors.
"""

from __future__ import annotations


class HealthmateError(Exception):
    """Base class of every error this package raises on purpose."""


class RawDataError(HealthmateError):
    """Raw input cannot be read or lacks what its schema requires (raised by ingest)."""


class NotIngestedError(HealthmateError):
    """build-features was given raw data that was not ingested, or changed since (engineering)."""


class FeatureRepoError(HealthmateError):
    """The Feast repository or registry is missing or inconsistent (store helpers)."""


class EntityFrameError(HealthmateError):
    """An entity/label frame is unusable for a point-in-time join (training)."""


class ConfigError(HealthmateError):
    """A configuration file or dict is invalid (training, preprocessing)."""


class DatasetVersionError(HealthmateError):
    """A dataset version is missing, invalid, tampered with, or would be overwritten (versioning)."""


class ServiceUnavailableError(HealthmateError):
    """Postgres or Redis could not be reached within the configured timeout (production profile);
    or an online lookup found no free slot or passed its deadline (api.online_limit)."""


class OnlineStoreLostError(ServiceUnavailableError):
    """The online store no longer holds what the registry says was materialized: Redis restarted
    empty or was flushed (stores.online_marks); re-run materialize."""


class PreprocessingError(HealthmateError, ValueError):
    """Data does not fit a preprocessing pipeline or transformer (preprocessing).

    Missing or null key columns, a fit that fails; also a ValueError, as scikit-learn expects.
    """


class StoreError(HealthmateError):
    """The SQL store's schema is newer than this package, or a migration failed (sqlstore)."""


class TrackingError(HealthmateError):
    """A model-metrics record or query is invalid, or a comparison would mix datasets (tracking)."""


class DatasetRefError(DatasetVersionError, TrackingError):
    """A dataset reference is not NAME@VERSION (datasets.ref; both the registry and tracking raise it)."""


class RequestTimeError(HealthmateError, ValueError):
    """A request time (`event_timestamp`) the temporal features cannot read (features.definitions)."""


class AuthError(HealthmateError):
    """A bearer token is missing, malformed, unknown or revoked (auth.authenticate)."""


class ApiKeyError(HealthmateError):
    """An API-key request is invalid: unknown role or key id, missing user id (auth management)."""


class AuditError(HealthmateError):
    """An audit record has a field outside its allowed shape, e.g. a target with free text (audit)."""


class NotFoundError(HealthmateError):
    """Base of errors about a named thing that does not exist; the HTTP API answers 404."""


class ConflictError(HealthmateError):
    """Base of errors about a request that conflicts with existing state; the HTTP API answers 409."""


class DatasetNotFoundError(DatasetVersionError, NotFoundError):
    """A dataset has no versions, or not the one asked for (versioning)."""


class ModelNotFoundError(TrackingError, NotFoundError):
    """No metrics are logged for a model name, or for the versions asked for (tracking)."""


class MixedDatasetsError(TrackingError, ConflictError):
    """A comparison would mix values measured on different dataset versions (tracking.compare)."""


class FeatureServiceNotFoundError(FeatureRepoError, NotFoundError):
    """A feature service is not in the Feast registry (store helpers)."""


class FeatureViewNotFoundError(FeatureRepoError, NotFoundError):
    """A feature view is not in the Feast registry, or not one that can be materialized (store helpers)."""


class MaterializationError(HealthmateError, ValueError):
    """A materialization window is empty or ends before it starts (store helpers)."""


class FeatureSetError(ConfigError):
    """A feature-set definition is invalid: its name, an unknown view or feature (feature_sets)."""


class FeatureSetExistsError(FeatureSetError, ConflictError):
    """A feature set would replace an existing feature service without being allowed to (feature_sets)."""


class UserNotFoundError(NotFoundError):
    """A user id has no row in any feature view of the online store (store.online_features)."""


class JobNotFoundError(NotFoundError):
    """No background job has the id asked for (jobs)."""


class JobStateError(ConflictError):
    """A job cannot change as asked: cancelling a running or finished job (jobs)."""


class LockTimeoutError(ConflictError):
    """A lock (one materialization per view, one build per dataset) stayed held by another process
    longer than the caller would wait (backends.locks); a job retries it with backoff."""


class ErasureError(ConflictError):
    """An erasure cannot complete as things stand, e.g. a damaged dataset version; it stays pending (governance)."""


class ErasureNotFoundError(ErasureError, NotFoundError):
    """No erasure in the ledger has the id asked for (backends.ledger)."""


class PermissionDeniedError(HealthmateError):
    """A valid API key may not do this: a user key on an admin endpoint or another user's data (api)."""


class OfflineStoreError(HealthmateError):
    """A historical retrieval, materialization, push or log write cannot be served (our offline stores)."""


class OfflineStoreUnsupportedError(OfflineStoreError):
    """A Feast offline-store method, or one of its options, that one of our offline stores does not
    offer; the message names the method, the store and the alternative."""

    def __init__(self, method: str, store: str, alternative: str) -> None:
        super().__init__(f"{store}.{method} is not supported: {alternative}")
        self.method, self.store, self.alternative = method, store, alternative


class OnlineReadError(HealthmateError):
    """An online lookup the fast Redis reader cannot serve, or a bad request to it (online)."""


class EncryptionKeyError(HealthmateError):
    """A master or data key is missing or wrong, or encrypted data does not open with it (crypto).

    The message names the file or value and the key id it needs, never any of its content."""


class DriftError(HealthmateError):
    """A drift comparison cannot run: a bad window or source, no recent values, no served-feature
    log (monitoring.drift)."""
