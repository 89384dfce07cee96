-- appproxy provider schema. Portable between SQLite and PostgreSQL: ids are TEXT uuids,
-- times are BIGINT milliseconds since the epoch, flags are BIGINT 0/1 (sqlx::Any has no
-- SQLite boolean), lists and documents are JSON TEXT.

CREATE TABLE workers (
    id                            TEXT PRIMARY KEY,
    authority                     TEXT NOT NULL,
    frontend_mode                 TEXT NOT NULL,
    protocol                      TEXT NOT NULL,
    hostname                      TEXT NOT NULL,
    tls_listen                    BIGINT NOT NULL,
    tls_advertised                BIGINT NOT NULL,
    api_port                      BIGINT NOT NULL,
    port_range_lo                 BIGINT,
    port_range_hi                 BIGINT,
    wildcard_domain               TEXT,
    wildcard_traffic_port         BIGINT,
    filtered_apps_only            BIGINT NOT NULL,
    traefik_last_used_marker_path TEXT,
    accepted_traffics             TEXT NOT NULL,
    app_filters                   TEXT NOT NULL,
    authgate_url                  TEXT,
    nodes                         BIGINT NOT NULL,
    status                        TEXT NOT NULL,
    last_heartbeat                BIGINT NOT NULL,
    created_at                    BIGINT NOT NULL,
    updated_at                    BIGINT NOT NULL
);
CREATE UNIQUE INDEX workers_authority ON workers (authority);

CREATE TABLE circuits (
    id                 TEXT PRIMARY KEY,
    worker_id          TEXT NOT NULL REFERENCES workers (id),
    app                TEXT NOT NULL,
    protocol           TEXT NOT NULL,
    app_mode           TEXT NOT NULL,
    frontend_mode      TEXT NOT NULL,
    port               BIGINT,
    subdomain          TEXT,
    envs               TEXT NOT NULL,
    arguments          TEXT,
    open_to_public     BIGINT NOT NULL,
    allowed_client_ips TEXT NOT NULL,
    user_id            TEXT,
    endpoint_id        TEXT,
    runtime_variant    TEXT,
    idle_timeout       BIGINT,
    generation         BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
-- A port or subdomain is held by at most one circuit per worker (NULLs never collide).
CREATE UNIQUE INDEX circuits_worker_port ON circuits (worker_id, port);
CREATE UNIQUE INDEX circuits_worker_subdomain ON circuits (worker_id, subdomain);
CREATE INDEX circuits_user ON circuits (user_id);
CREATE INDEX circuits_endpoint ON circuits (endpoint_id);

CREATE TABLE routes (
    circuit_id    TEXT NOT NULL REFERENCES circuits (id) ON DELETE CASCADE,
    idx           BIGINT NOT NULL,
    route_id      TEXT,
    session_id    TEXT NOT NULL,
    session_name  TEXT,
    kernel_host   TEXT NOT NULL,
    kernel_port   BIGINT NOT NULL,
    protocol      TEXT NOT NULL,
    traffic_ratio DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (circuit_id, idx)
);
CREATE UNIQUE INDEX routes_route_id ON routes (circuit_id, route_id);
CREATE INDEX routes_session ON routes (session_id);

CREATE TABLE endpoints (
    id                   TEXT PRIMARY KEY,
    health_check_enabled BIGINT NOT NULL,
    health_check_config  TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE tokens (
    id                  TEXT PRIMARY KEY,
    login_session_token TEXT,
    kernel_host         TEXT NOT NULL,
    kernel_port         BIGINT NOT NULL,
    session_id          TEXT NOT NULL,
    user_uuid           TEXT NOT NULL,
    group_id            TEXT NOT NULL,
    access_key          TEXT NOT NULL,
    domain_name         TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_at);
