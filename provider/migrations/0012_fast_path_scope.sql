-- The fast path's scope (issue 19): Traefik builds one plugin instance per router that uses it
-- (~1.2 MiB and ~9 ms of CPU at every reload), so a worker puts only its inference circuits on
-- it unless authgate's `[fast_path] scope = "all"` (then: interactive ones too).
ALTER TABLE workers ADD COLUMN fast_path_interactive INTEGER NOT NULL DEFAULT 0;
