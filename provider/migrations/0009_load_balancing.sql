-- Inference endpoints: which replica takes the next request (issue 18): round_robin (Traefik's
-- wrr, weighted by traffic_ratio), least_connections (p2c) or least_time (leasttime).
ALTER TABLE endpoints ADD COLUMN load_balancing TEXT NOT NULL DEFAULT 'round_robin';
-- A per-endpoint rate limit on inference traffic (requests per window, counted by authgate in
-- Redis across all its replicas; 0 = off).
ALTER TABLE endpoints ADD COLUMN rate_limit_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE endpoints ADD COLUMN rate_limit_window_seconds BIGINT NOT NULL DEFAULT 60;
