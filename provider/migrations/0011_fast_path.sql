-- The fast path (issue 19): the worker's cookie circuits are decided by a plugin inside its
-- Traefik (authgate's `[fast_path] dir`), so their routers carry that plugin instead of
-- ForwardAuth.
ALTER TABLE workers ADD COLUMN fast_path INTEGER NOT NULL DEFAULT 0;
