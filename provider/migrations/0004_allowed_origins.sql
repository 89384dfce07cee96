-- Extra origins (JSON array of "scheme://host[:port]") whose pages may make unsafe requests and
-- WebSocket upgrades with a circuit's cookie; NULL: only the app's own origin.
ALTER TABLE circuits ADD COLUMN allowed_origins TEXT;
