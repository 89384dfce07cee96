-- Per-worker credentials: each binds one worker authority; only SHA-256 of the secret is kept.
-- Several per authority allow rotation (enrol a new one, switch the worker, revoke the old).
CREATE TABLE worker_credentials (
    id TEXT PRIMARY KEY,
    authority TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX worker_credentials_authority ON worker_credentials (authority);
