-- Inference endpoints: which replica takes the next request (issue 18): round_robin (Traefik's
-- wrr, weighted by traffic_ratio), least_connections (p2c) or least_time (leasttime).
ALTER TABLE endpoints ADD COLUMN load_balancing TEXT NOT NULL DEFAULT 'round_robin';
