-- WebAssembly auth plugin of a circuit: its name and JSON config (NULL: none).
ALTER TABLE circuits ADD COLUMN auth_plugin TEXT;
ALTER TABLE circuits ADD COLUMN auth_plugin_config TEXT;
