-- Draining a worker (issue 20, `appproxyctl workers drain`): it takes no new circuits and keeps
-- the ones it has. Set by the operator, kept across the worker's re-registrations.
ALTER TABLE workers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
