-- Path mode (issue 18): apps under `/<session>/<app>/` on one host and port. A circuit's
-- prefix is kept in `subdomain` with its leading `/` (unique per worker by the same index);
-- the worker lists the apps that run under their base URL (comma-separated; the others get
-- the prefix stripped).
ALTER TABLE workers ADD COLUMN path_keep_prefix_apps TEXT NOT NULL DEFAULT '';
