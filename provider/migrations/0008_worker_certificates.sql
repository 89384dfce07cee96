-- Worker HTTPS with ACME (issue 17): the certificate resolver of the worker's Traefik that
-- every TLS router names, and the certificate's names (main first, then SANs; comma-separated;
-- empty: one certificate per router Host).
ALTER TABLE workers ADD COLUMN cert_resolver TEXT;
ALTER TABLE workers ADD COLUMN cert_domains TEXT NOT NULL DEFAULT '';
